//! The data connection between TaskManagers: a byte stream of frames
//! (`cluster::frame::split_frame`), each payload a postcard `DataFrame` of keyed records
//! (`cluster::wire::decode_data`). Every payload is decoded as the record types that cross
//! the keyed shuffles of the built-in jobs. `Ok` or `Err`, never a panic; a frame that
//! decodes must encode again to bytes that decode to the same encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir::Error;
use weir::cluster::frame::split_frame;
use weir::cluster::wire::{StoreResolver, decode_data, encode_data};
use weir::connectors::generator::SequenceEvent;
use weir::jobs::{minute_bars::Trade, state_machine, url_count::AccessLog};
use weir::runtime::shuffle::KeyedRecord;
use weir::storage::ObjectStore;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    while let Ok(Some((payload, rest))) = split_frame(stream) {
        // The wire test's type, then the built-in jobs' shuffles.
        check::<KeyedRecord<String, (u64, String)>>(payload);
        check::<KeyedRecord<String, String>>(payload); // word-count
        check::<KeyedRecord<u64, SequenceEvent>>(payload); // sequence-check, window-check
        check::<KeyedRecord<String, Trade>>(payload); // minute-bars
        check::<KeyedRecord<String, state_machine::Event>>(payload); // state-machine
        check::<KeyedRecord<String, AccessLog>>(payload); // url-count
        stream = rest;
    }
});

/// Savepoint barriers name a directory to open; the fuzzer gets none.
struct NoStores;

impl StoreResolver for NoStores {
    fn open(&self, uri: &str) -> weir::Result<ObjectStore> {
        Err(Error::spec(
            "savepoint",
            format!("not opened while fuzzing: {uri}"),
        ))
    }
}

fn check<R: Serialize + DeserializeOwned>(payload: &[u8]) {
    let Ok(frame) = decode_data::<R>(payload) else {
        return;
    };
    let Ok(message) = frame.into_message(&NoStores) else {
        return;
    };
    let mut encoded = Vec::new();
    encode_data(&message, &mut encoded).expect("a decoded frame encodes");
    let again = decode_data::<R>(&encoded)
        .expect("an encoded frame decodes")
        .into_message(&NoStores)
        .expect("a re-decoded frame converts");
    let mut reencoded = Vec::new();
    encode_data(&again, &mut reencoded).expect("a re-decoded frame encodes");
    assert_eq!(
        encoded, reencoded,
        "frame changed through decode and encode"
    );
}
