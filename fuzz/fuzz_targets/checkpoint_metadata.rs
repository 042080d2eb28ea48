//! `CheckpointMetadata::decode` on arbitrary bytes: `Ok` or `Err`, never a panic.
//!
//! Each input is decoded twice: as it is (a `_metadata` object as read from storage: header
//! line, CRC-32, JSON), and with its body behind a header whose checksum matches, because a
//! random mutation almost never keeps the CRC right and the JSON decoding would go unfuzzed.
//! Metadata that decodes must encode again and decode to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::checkpoint::CheckpointMetadata;

const HEADER_PREFIX: &[u8] = b"WEIR-CHECKPOINT 1 crc32=";
const OBJECT: &str = "fuzz/chk-1/_metadata";

fuzz_target!(|data: &[u8]| {
    check(data);

    // The JSON body: after the header line when the input has one (the seeds do).
    let body = match data.iter().position(|&b| b == b'\n') {
        Some(newline) if data.starts_with(HEADER_PREFIX) => &data[newline + 1..],
        _ => data,
    };
    let mut framed =
        format!("WEIR-CHECKPOINT 1 crc32={:08x}\n", crc32fast::hash(body)).into_bytes();
    framed.extend_from_slice(body);
    check(&framed);
});

fn check(data: &[u8]) {
    let Ok(metadata) = CheckpointMetadata::decode(data, OBJECT) else {
        return;
    };
    let _ = metadata.state_size();
    let encoded = metadata.encode().expect("decoded metadata encodes");
    let again = CheckpointMetadata::decode(&encoded, OBJECT).expect("encoded metadata decodes");
    assert_eq!(
        again, metadata,
        "metadata changed through encode and decode"
    );
}
