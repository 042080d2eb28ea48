//! The seed corpus of the fuzz targets in `fuzz/` (see `fuzz/README.md`): one framed message
//! of every kind the network decoders read, made by the real encoders, plus a savepoint's
//! `_metadata`. The committed seeds must be what the encoders produce today, so a change to
//! the wire format fails here until they are rewritten:
//!
//! ```sh
//! WEIR_WRITE_FUZZ_SEEDS=1 cargo test --release -p weir --lib fuzz_seeds
//! ```
//!
//! (The other `_metadata` seeds are real objects copied from example runs; they are left
//! alone.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::frame::{split_frame, write_frame};
use super::wire::{
    ChannelId, DataFrame, DataHello, DataHelloReply, Deployment, ToJobManager, ToTaskManager,
    WireBarrier, WireControl, WireSavepoint, WireTaskEvent, decode_control, decode_data,
    encode_control, encode_data,
};
use crate::checkpoint::metadata::{CheckpointMetadata, OperatorSnapshot, SnapshotKind};
use crate::checkpoint::{KeyedStateHandle, SubtaskState};
use crate::connectors::generator::SequenceEvent;
use crate::jobs::minute_bars::Trade;
use crate::jobs::state_machine::{Event, EventType};
use crate::jobs::url_count::AccessLog;
use crate::runtime::shuffle::KeyedRecord;
use crate::runtime::watermark::Watermark;
use crate::runtime::{Barrier, Message, TaskId};
use crate::state::{KeyGroupRange, OperatorStateSnapshot, Redistribution};

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, payload).expect("frame");
    out
}

/// Checks one frame payload of a seed: it decodes as the one type the seed was made with and
/// encodes back to the same bytes (so it is not merely accepted by a lenient decoder).
type PayloadCheck = fn(&[u8]) -> Result<(), String>;

/// A seed's bytes (one or more frames) and the check for each of its frames.
struct Seed {
    bytes: Vec<u8>,
    check: PayloadCheck,
}

fn data_round_trip<R: Serialize + DeserializeOwned>(payload: &[u8]) -> Result<(), String> {
    let frame = decode_data::<R>(payload).map_err(|e| e.to_string())?;
    let encoded = postcard::to_stdvec(&frame).map_err(|e| e.to_string())?;
    (encoded == payload)
        .then_some(())
        .ok_or_else(|| "decodes, but encodes back to other bytes".to_string())
}

fn control_round_trip<T: Serialize + DeserializeOwned>(payload: &[u8]) -> Result<(), String> {
    let message = decode_control::<T>(payload).map_err(|e| e.to_string())?;
    let encoded = encode_control(&message).map_err(|e| e.to_string())?;
    (encoded == payload)
        .then_some(())
        .ok_or_else(|| "decodes, but encodes back to other bytes".to_string())
}

fn data<R: Serialize + DeserializeOwned>(message: Message<R>) -> Seed {
    let mut payload = Vec::new();
    encode_data(&message, &mut payload).expect("encode data frame");
    Seed {
        bytes: framed(&payload),
        check: data_round_trip::<R>,
    }
}

fn control<T: Serialize + DeserializeOwned>(message: &T) -> Seed {
    Seed {
        bytes: framed(&encode_control(message).expect("encode control message")),
        check: control_round_trip::<T>,
    }
}

fn keyed<K, T>(key_group: u16, key: K, value: T) -> KeyedRecord<K, T> {
    KeyedRecord {
        key_group,
        key,
        value,
    }
}

const TASK: TaskId = TaskId {
    vertex: 1,
    subtask: 0,
};

fn savepoint_barrier() -> WireBarrier {
    WireBarrier {
        checkpoint_id: 7,
        timestamp_ms: 1_700_000_000_000,
        savepoint: Some(WireSavepoint {
            uri: "s3://weir/savepoints/sp-1".into(),
            stop: true,
        }),
    }
}

fn subtask_state() -> SubtaskState {
    let mut operator_state = BTreeMap::new();
    operator_state.insert(
        "offsets".to_string(),
        OperatorStateSnapshot {
            redistribution: Redistribution::Union,
            entries: vec![serde_json::json!({"file": "a.jsonl", "offset": 307, "done": false})],
        },
    );
    SubtaskState {
        keyed: Some(KeyedStateHandle {
            object: "counter-0.state".into(),
            key_groups: KeyGroupRange { start: 0, end: 64 },
            size: 129,
            crc32: 3_071_615_211,
            entries: 4,
        }),
        keyed_incremental: None,
        operator_state,
        ttl_states: Vec::new(),
    }
}

/// Seeds of the `data_frame` target: frames on a data connection.
fn data_frames() -> Vec<(&'static str, Seed)> {
    let barrier = Barrier {
        checkpoint_id: 3,
        timestamp_ms: 1_700_000_000_000,
        savepoint: None,
    };
    let trade = Trade {
        sec_code: "600000".into(),
        sec_name: "PF Bank".into(),
        event_time: 1_604_280_778_874,
        pre_close_price: 10.5,
        open_price: 10.6,
        high_price: 10.9,
        low_price: 10.4,
        trade_price: 10.75,
        trade_vol_day: 120_000,
        trade_amt_day: 129_000_000,
        split: 0,
    };
    let access = AccessLog {
        timestamp: "2024-01-01T00:00:00Z".into(),
        remote_addr: "10.0.0.1".into(),
        request: "GET /index.html HTTP/1.1".into(),
        url: "/index.html".into(),
    };
    // `encode_data` takes a barrier with an opened store; the frame names it by URI.
    let savepoint_barrier_payload = postcard::to_stdvec(&DataFrame::<
        KeyedRecord<u64, SequenceEvent>,
    >::Barrier(savepoint_barrier()))
    .expect("encode savepoint barrier");
    let mut stream = data(Message::Records(vec![keyed(
        7,
        "alpha".to_string(),
        "alpha".to_string(),
    )]));
    stream.bytes.extend(
        data::<KeyedRecord<String, String>>(Message::Watermark(Watermark::At(1_000))).bytes,
    );
    stream
        .bytes
        .extend(data::<KeyedRecord<String, String>>(Message::Barrier(barrier.clone())).bytes);
    stream
        .bytes
        .extend(data::<KeyedRecord<String, String>>(Message::EndOfStream).bytes);
    vec![
        (
            "records-string-tuple",
            data(Message::Records(vec![
                keyed(7, "a".to_string(), (1u64, "x".to_string())),
                keyed(9, "b".to_string(), (2u64, "y".to_string())),
            ])),
        ),
        (
            "records-word-count",
            data(Message::Records(vec![
                keyed(3, "the".to_string(), "the".to_string()),
                keyed(90, "weir".to_string(), "weir".to_string()),
            ])),
        ),
        (
            "records-sequence-event",
            data(Message::Records(vec![
                keyed(5, 4u64, SequenceEvent { key: 4, seq: 0 }),
                keyed(5, 4u64, SequenceEvent { key: 4, seq: 1 }),
                keyed(77, 9u64, SequenceEvent { key: 9, seq: 18 }),
            ])),
        ),
        (
            "records-trade",
            data(Message::Records(vec![keyed(
                40,
                trade.sec_code.clone(),
                trade,
            )])),
        ),
        (
            "records-state-machine",
            data(Message::Records(vec![keyed(
                12,
                "10.1.2.3".to_string(),
                Event {
                    source_address: "10.1.2.3".into(),
                    event_type: EventType::C,
                },
            )])),
        ),
        (
            "records-access-log",
            data(Message::Records(vec![keyed(
                100,
                access.url.clone(),
                access,
            )])),
        ),
        (
            "barrier",
            data::<KeyedRecord<u64, SequenceEvent>>(Message::Barrier(barrier)),
        ),
        (
            "barrier-savepoint",
            Seed {
                bytes: framed(&savepoint_barrier_payload),
                check: data_round_trip::<KeyedRecord<u64, SequenceEvent>>,
            },
        ),
        (
            "watermark",
            data::<KeyedRecord<u64, SequenceEvent>>(Message::Watermark(Watermark::At(-5))),
        ),
        (
            "watermark-idle",
            data::<KeyedRecord<u64, SequenceEvent>>(Message::Watermark(Watermark::Idle)),
        ),
        (
            "watermark-max",
            data::<KeyedRecord<u64, SequenceEvent>>(Message::Watermark(Watermark::MAX)),
        ),
        (
            "end-of-stream",
            data::<KeyedRecord<u64, SequenceEvent>>(Message::EndOfStream),
        ),
        ("stream", stream),
    ]
}

/// Seeds of the `control_frame` target: frames on a control connection and the data
/// connection handshake.
fn control_frames() -> Vec<(&'static str, Seed)> {
    let job = r#"{"job":{"name":"word-count","args":{"input":"s3://weir/in","output":"s3://weir/out"}},"parallelism":2,"checkpointing":{"interval":"5s","storage":"s3://weir/chk"}}"#;
    let control_task = |message| ToTaskManager::Control {
        epoch: 4,
        task: TASK,
        message,
    };
    let event = |event| ToJobManager::Event { epoch: 4, event };
    vec![
        (
            "register",
            control(&ToJobManager::Register {
                protocol: super::wire::PROTOCOL_VERSION,
                tm_id: "tm-0".into(),
                slots: 2,
                data_port: 6121,
                data_host: Some("weir-tm-0.weir".into()),
                operators: Vec::new(),
            }),
        ),
        (
            "tm-heartbeat",
            control(&ToJobManager::Heartbeat {
                operators: vec![crate::metrics::OperatorTotals {
                    operator: "checker".into(),
                    records_in: 7,
                    records_out: 5,
                    backpressure_ms: 0,
                }],
            }),
        ),
        (
            "acknowledge",
            control(&event(WireTaskEvent::Acknowledge {
                checkpoint_id: 7,
                task: TASK,
                states: vec![("counter".into(), subtask_state())],
            })),
        ),
        (
            "decline",
            control(&event(WireTaskEvent::Decline {
                checkpoint_id: 7,
                task: TASK,
                reason: "not running".into(),
            })),
        ),
        (
            "source-finished",
            control(&event(WireTaskEvent::SourceFinished { task: TASK })),
        ),
        (
            "finished",
            control(&event(WireTaskEvent::Finished { task: TASK })),
        ),
        (
            "failed",
            control(&event(WireTaskEvent::Failed {
                task: TASK,
                message: "operator counter: boom".into(),
                kind: super::wire::FailureKind::Recoverable,
            })),
        ),
        (
            "attempt-ended",
            control(&ToJobManager::AttemptEnded { epoch: 4 }),
        ),
        ("jm-heartbeat", control(&ToTaskManager::Heartbeat)),
        (
            "refused",
            control(&ToTaskManager::Refused {
                reason: "TaskManager tm-0 speaks wire protocol 0".into(),
            }),
        ),
        (
            "deploy",
            control(&ToTaskManager::Deploy(Deployment {
                epoch: 4,
                attempt_id: "a1b2c3".into(),
                job: job.into(),
                restore: Some("s3://weir/chk/word-count/chk-6".into()),
                subtasks: vec![0, 1],
                peers: vec!["10.0.0.5:6121".into(), "10.0.0.6:6121".into()],
            })),
        ),
        (
            "trigger-savepoint",
            control(&control_task(WireControl::TriggerCheckpoint {
                barrier: savepoint_barrier(),
            })),
        ),
        (
            "checkpoint-complete",
            control(&control_task(WireControl::CheckpointComplete {
                checkpoint_id: 7,
            })),
        ),
        (
            "abort-checkpoint",
            control(&control_task(WireControl::AbortCheckpoint {
                checkpoint_id: 8,
            })),
        ),
        ("stop", control(&control_task(WireControl::Stop))),
        ("cancel-task", control(&control_task(WireControl::Cancel))),
        ("cancel", control(&ToTaskManager::Cancel { epoch: 4 })),
        (
            "data-hello",
            control(&DataHello {
                epoch: 4,
                channel: ChannelId {
                    exchange: 0,
                    producer: 1,
                    consumer: 0,
                },
            }),
        ),
        ("data-hello-accepted", control(&DataHelloReply::Accepted)),
        ("data-hello-not-yet", control(&DataHelloReply::NotYet)),
        ("data-hello-fenced", control(&DataHelloReply::Fenced)),
    ]
}

/// Seeds of the `checkpoint_metadata` target besides the real checkpoints: a savepoint.
fn metadata() -> Vec<(&'static str, Vec<u8>)> {
    let mut operators = BTreeMap::new();
    operators.insert(
        "counter".to_string(),
        OperatorSnapshot {
            subtasks: vec![subtask_state(), SubtaskState::default()],
        },
    );
    let savepoint = CheckpointMetadata {
        job_id: "word-count".into(),
        checkpoint_id: 12,
        kind: SnapshotKind::Savepoint,
        timestamp_ms: 1_700_000_000_000,
        parallelism: 2,
        max_parallelism: 128,
        operators,
        job_manager: None,
    };
    vec![("savepoint", savepoint.encode().expect("encode metadata"))]
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn seeds_decode() {
    for (name, seed) in data_frames().into_iter().chain(control_frames()) {
        let mut stream = seed.bytes.as_slice();
        let mut frames = 0;
        while let Some((payload, rest)) = split_frame(stream).expect("frame") {
            (seed.check)(payload).unwrap_or_else(|e| panic!("{name}, frame {frames}: {e}"));
            frames += 1;
            stream = rest;
        }
        assert!(stream.is_empty(), "{name}");
        assert!(frames > 0, "{name} holds no frame");
    }
    for (name, bytes) in metadata() {
        CheckpointMetadata::decode(&bytes, name).expect(name);
    }
}

#[test]
fn committed_seeds_are_current() {
    let write = std::env::var_os("WEIR_WRITE_FUZZ_SEEDS").is_some();
    // Rewriting instead of comparing passes whatever changed: never under CI.
    assert!(
        !(write && std::env::var_os("CI").is_some_and(|v| !v.is_empty())),
        "WEIR_WRITE_FUZZ_SEEDS is set under CI, where the committed seeds must be compared"
    );
    let bytes_of = |seeds: Vec<(&'static str, Seed)>| {
        seeds
            .into_iter()
            .map(|(name, seed)| (name, seed.bytes))
            .collect::<Vec<_>>()
    };
    for (target, seeds) in [
        ("data_frame", bytes_of(data_frames())),
        ("control_frame", bytes_of(control_frames())),
        ("checkpoint_metadata", metadata()),
    ] {
        let dir = corpus_dir(target);
        for (name, bytes) in seeds {
            let path = dir.join(format!("seed-{name}"));
            if write {
                std::fs::create_dir_all(&dir).expect("create corpus dir");
                std::fs::write(&path, &bytes).expect("write seed");
                continue;
            }
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == bytes,
                "fuzz seed {} is missing or stale: rewrite the seeds with \
                 `WEIR_WRITE_FUZZ_SEEDS=1 cargo test --release -p weir --lib fuzz_seeds`",
                path.display()
            );
        }
    }
}
