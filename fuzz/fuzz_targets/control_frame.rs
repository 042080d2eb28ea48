//! The control connection (JobManager <-> TaskManager) and the data-connection handshake: a
//! byte stream of frames (`cluster::frame::split_frame`), each payload a JSON message
//! (`cluster::wire::decode_control`) decoded as every type a receiver reads. `Ok` or `Err`,
//! never a panic; a message that decodes must encode again and decode again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir::Error;
use weir::cluster::frame::split_frame;
use weir::cluster::wire::{
    DataHello, DataHelloReply, StoreResolver, ToJobManager, ToTaskManager, decode_control,
    encode_control,
};
use weir::runtime::TaskEvent;
use weir::storage::ObjectStore;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    while let Ok(Some((payload, rest))) = split_frame(stream) {
        // JobManager reads these from TaskManagers.
        if let Some(ToJobManager::Event { event, .. }) = check::<ToJobManager>(payload) {
            let _: TaskEvent = event.into();
        }
        // TaskManagers read these from the JobManager.
        if let Some(ToTaskManager::Control { message, .. }) = check::<ToTaskManager>(payload) {
            let _ = message.into_message(&NoStores);
        }
        // The data-connection handshake, both ways.
        check::<DataHello>(payload);
        check::<DataHelloReply>(payload);
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

/// Decodes `payload` as a `T`; one that decodes encodes again, and that encoding decodes and
/// encodes to the same bytes.
fn check<T: Serialize + DeserializeOwned>(payload: &[u8]) -> Option<T> {
    let message = decode_control::<T>(payload).ok()?;
    let encoded = encode_control(&message).expect("a decoded message encodes");
    let again = decode_control::<T>(&encoded).expect("an encoded message decodes");
    let reencoded = encode_control(&again).expect("a re-decoded message encodes");
    assert_eq!(
        String::from_utf8_lossy(&encoded),
        String::from_utf8_lossy(&reencoded),
        "message changed through decode and encode"
    );
    Some(message)
}
