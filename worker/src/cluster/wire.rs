//! What crosses the network: the control protocol between JobManager and TaskManagers (JSON
//! frames: rare, small, and readable in a packet capture) and the data frames between
//! TaskManagers (postcard: compact and fast, one frame per batch of records).
//!
//! Every message about an attempt carries its epoch. A receiver drops anything from another
//! epoch, which fences a TaskManager that was paused or cut off while the job moved on.

use serde::{Deserialize, Serialize};

use crate::checkpoint::SubtaskState;
use crate::error::{Error, Result};
/// The data frames between TaskManagers are the serialized form of `runtime::Message`, so
/// they are defined beside it; they are part of the protocol [`PROTOCOL_VERSION`] versions.
pub use crate::runtime::remote::{
    ChannelId, DataFrame, StoreResolver, WireBarrier, WireSavepoint, decode_data, encode_data,
};
use crate::runtime::{ControlMessage, TaskEvent, TaskId};

/// The first frame on a data connection, from the producing TaskManager.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataHello {
    pub epoch: u64,
    pub channel: ChannelId,
}

/// The consumer's answer to `DataHello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataHelloReply {
    Accepted,
    /// The consumer has not been deployed for this epoch yet: try again shortly.
    NotYet,
    /// The epoch is over (or the channel unknown): give up.
    Fenced,
}

/// The version of the RPC and data protocol. A TaskManager sends it in `Register`; a
/// JobManager speaking another version refuses it with a message naming both, instead of
/// misreading frames. Raise it with every change an older peer would decode wrongly.
pub const PROTOCOL_VERSION: u32 = 1;

/// TaskManager -> JobManager.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ToJobManager {
    /// First message of a connection. The JobManager reaches the TaskManager's data port at
    /// the address this connection comes from, unless `data_host` says otherwise.
    Register {
        /// [`PROTOCOL_VERSION`] of the sender; 0 from TaskManagers that predate it.
        #[serde(default)]
        protocol: u32,
        tm_id: String,
        slots: u32,
        data_port: u16,
        #[serde(default)]
        data_host: Option<String>,
        /// This TaskManager's per-operator counters so far: the JobManager counts only what
        /// comes after (`metrics::ClusterCounters`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        operators: Vec<crate::metrics::OperatorTotals>,
    },
    /// Also carries this TaskManager's per-operator counters, which the JobManager sums
    /// into its `/metrics`.
    Heartbeat {
        #[serde(default)]
        operators: Vec<crate::metrics::OperatorTotals>,
    },
    Event {
        epoch: u64,
        event: WireTaskEvent,
    },
    /// Every task of this attempt has stopped on this TaskManager.
    AttemptEnded {
        epoch: u64,
    },
}

/// JobManager -> TaskManager.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ToTaskManager {
    Heartbeat,
    /// The registration is refused for good (another protocol version); the connection closes.
    Refused {
        reason: String,
    },
    /// Run these subtasks (in slot-sharing fashion: subtask `i` of every vertex) as part of
    /// attempt `epoch`. Anything of an older attempt is cancelled first.
    Deploy(Deployment),
    Control {
        epoch: u64,
        task: TaskId,
        message: WireControl,
    },
    /// Cancel every task of this attempt.
    Cancel {
        epoch: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub epoch: u64,
    pub attempt_id: String,
    /// The job document as JSON: the JobManager's copy is the one that counts.
    pub job: String,
    /// Checkpoint or savepoint directory to restore from.
    pub restore: Option<String>,
    /// Subtask indices this TaskManager runs.
    pub subtasks: Vec<u32>,
    /// Data address (`host:port`) of the TaskManager running each subtask index.
    pub peers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum WireControl {
    TriggerCheckpoint { barrier: WireBarrier },
    CheckpointComplete { checkpoint_id: u64 },
    AbortCheckpoint { checkpoint_id: u64 },
    Stop,
    Cancel,
}

impl From<&ControlMessage> for WireControl {
    fn from(message: &ControlMessage) -> Self {
        match message {
            ControlMessage::TriggerCheckpoint(b) => {
                WireControl::TriggerCheckpoint { barrier: b.into() }
            }
            ControlMessage::CheckpointComplete(id) => {
                WireControl::CheckpointComplete { checkpoint_id: *id }
            }
            ControlMessage::AbortCheckpoint(id) => {
                WireControl::AbortCheckpoint { checkpoint_id: *id }
            }
            ControlMessage::Stop => WireControl::Stop,
            ControlMessage::Cancel => WireControl::Cancel,
        }
    }
}

impl WireControl {
    pub fn into_message(self, resolve: &dyn StoreResolver) -> Result<ControlMessage> {
        Ok(match self {
            WireControl::TriggerCheckpoint { barrier } => {
                ControlMessage::TriggerCheckpoint(barrier.into_barrier(resolve)?)
            }
            WireControl::CheckpointComplete { checkpoint_id } => {
                ControlMessage::CheckpointComplete(checkpoint_id)
            }
            WireControl::AbortCheckpoint { checkpoint_id } => {
                ControlMessage::AbortCheckpoint(checkpoint_id)
            }
            WireControl::Stop => ControlMessage::Stop,
            WireControl::Cancel => ControlMessage::Cancel,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum WireTaskEvent {
    Acknowledge {
        checkpoint_id: u64,
        task: TaskId,
        states: Vec<(String, SubtaskState)>,
    },
    Decline {
        checkpoint_id: u64,
        task: TaskId,
        reason: String,
    },
    SourceFinished {
        task: TaskId,
    },
    Finished {
        task: TaskId,
    },
    Failed {
        task: TaskId,
        message: String,
        kind: FailureKind,
    },
}

/// What a task failure means for the job, sent as a field rather than read from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureKind {
    /// The task was cancelled (its attempt is being stopped): not a failure of the job.
    Cancelled,
    /// A restart can fix it.
    Recoverable,
    /// A restart cannot (a corrupt checkpoint, an invalid job): the job fails.
    Unrecoverable,
}

impl From<TaskEvent> for WireTaskEvent {
    fn from(event: TaskEvent) -> Self {
        match event {
            TaskEvent::Acknowledge {
                checkpoint_id,
                task,
                states,
            } => WireTaskEvent::Acknowledge {
                checkpoint_id,
                task,
                states,
            },
            TaskEvent::Decline {
                checkpoint_id,
                task,
                reason,
            } => WireTaskEvent::Decline {
                checkpoint_id,
                task,
                reason,
            },
            TaskEvent::SourceFinished { task } => WireTaskEvent::SourceFinished { task },
            TaskEvent::Finished { task } => WireTaskEvent::Finished { task },
            TaskEvent::Failed { task, error } => WireTaskEvent::Failed {
                task,
                kind: match &error {
                    Error::Cancelled => FailureKind::Cancelled,
                    e if e.is_recoverable() => FailureKind::Recoverable,
                    _ => FailureKind::Unrecoverable,
                },
                message: error.to_string(),
            },
        }
    }
}

impl From<WireTaskEvent> for TaskEvent {
    fn from(event: WireTaskEvent) -> Self {
        match event {
            WireTaskEvent::Acknowledge {
                checkpoint_id,
                task,
                states,
            } => TaskEvent::Acknowledge {
                checkpoint_id,
                task,
                states,
            },
            WireTaskEvent::Decline {
                checkpoint_id,
                task,
                reason,
            } => TaskEvent::Decline {
                checkpoint_id,
                task,
                reason,
            },
            WireTaskEvent::SourceFinished { task } => TaskEvent::SourceFinished { task },
            WireTaskEvent::Finished { task } => TaskEvent::Finished { task },
            WireTaskEvent::Failed {
                task,
                message,
                kind,
            } => TaskEvent::Failed {
                task,
                error: match kind {
                    FailureKind::Cancelled => Error::Cancelled,
                    FailureKind::Recoverable | FailureKind::Unrecoverable => Error::Remote {
                        message,
                        recoverable: kind == FailureKind::Recoverable,
                    },
                },
            },
        }
    }
}

/// Encodes a control message as one JSON payload.
pub fn encode_control<T: Serialize>(message: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(message).map_err(|e| Error::codec("control message", e))
}

/// Decodes a control payload. Never panics on arbitrary bytes (fuzzed).
pub fn decode_control<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T> {
    serde_json::from_slice(payload).map_err(|e| Error::codec("control message", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::shuffle::KeyedRecord;
    use crate::runtime::{Barrier, Message};
    use crate::storage::ObjectStore;
    use crate::types::Watermark;

    struct NoStores;
    impl StoreResolver for NoStores {
        fn open(&self, uri: &str) -> Result<ObjectStore> {
            Err(Error::spec("savepoint", format!("unexpected {uri}")))
        }
    }

    #[test]
    fn data_frames_round_trip() {
        let records = vec![
            KeyedRecord {
                key_group: 7,
                key: "a".to_string(),
                value: (1u64, "x".to_string()),
            },
            KeyedRecord {
                key_group: 9,
                key: "b".to_string(),
                value: (2u64, "y".to_string()),
            },
        ];
        let mut buf = Vec::new();
        encode_data(&Message::Records(records), &mut buf).unwrap();
        let decoded: DataFrame<KeyedRecord<String, (u64, String)>> = decode_data(&buf).unwrap();
        let Message::Records(back) = decoded.into_message(&NoStores).unwrap() else {
            panic!("expected records");
        };
        assert_eq!(back.len(), 2);
        assert_eq!((back[1].key_group, back[1].key.as_str()), (9, "b"));
        assert_eq!(back[1].value, (2, "y".to_string()));

        buf.clear();
        let barrier = Barrier {
            checkpoint_id: 42,
            timestamp_ms: 5,
            savepoint: None,
        };
        encode_data::<KeyedRecord<String, u64>>(&Message::Barrier(barrier), &mut buf).unwrap();
        let decoded: DataFrame<KeyedRecord<String, u64>> = decode_data(&buf).unwrap();
        assert!(matches!(
            decoded.into_message(&NoStores).unwrap(),
            Message::Barrier(Barrier {
                checkpoint_id: 42,
                ..
            })
        ));

        for watermark in [Watermark::At(-5), Watermark::Idle, Watermark::MAX] {
            buf.clear();
            encode_data::<u64>(&Message::Watermark(watermark), &mut buf).unwrap();
            let decoded: DataFrame<u64> = decode_data(&buf).unwrap();
            assert!(matches!(
                decoded.into_message(&NoStores).unwrap(),
                Message::Watermark(w) if w == watermark
            ));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], &[0xff; 9], &[0, 200, 200, 200, 200, 1], &[3]] {
            assert!(decode_data::<KeyedRecord<String, u64>>(bytes).is_err());
        }
        assert!(decode_control::<ToTaskManager>(b"{\"type\":\"deploy\"}").is_err());
    }

    #[test]
    fn remote_failures_keep_whether_they_are_recoverable() {
        let corrupt = Error::CorruptCheckpoint {
            object: "s3://b/chk-1/_metadata".into(),
            reason: "crc".into(),
        };
        let event = TaskEvent::Failed {
            task: TaskId {
                vertex: 0,
                subtask: 1,
            },
            error: corrupt,
        };
        let wire = encode_control(&WireTaskEvent::from(event)).unwrap();
        let back: TaskEvent = decode_control::<WireTaskEvent>(&wire).unwrap().into();
        let TaskEvent::Failed { error, .. } = back else {
            panic!("expected a failure");
        };
        assert!(!error.is_recoverable());
        assert!(error.to_string().contains("s3://b/chk-1/_metadata"));

        // A cancellation stays one, whatever its message says.
        let cancelled = WireTaskEvent::from(TaskEvent::Failed {
            task: TaskId {
                vertex: 0,
                subtask: 0,
            },
            error: Error::Cancelled,
        });
        let back: TaskEvent = cancelled.into();
        assert!(matches!(
            back,
            TaskEvent::Failed {
                error: Error::Cancelled,
                ..
            }
        ));
    }

    #[test]
    fn a_registration_without_a_protocol_version_reads_as_version_0() {
        let old = br#"{"type":"register","tm_id":"tm-1","slots":1,"data_port":6121}"#;
        let Some(ToJobManager::Register { protocol, .. }) =
            decode_control::<ToJobManager>(old).ok()
        else {
            panic!("a registration");
        };
        assert_eq!(protocol, 0);
        assert_ne!(protocol, PROTOCOL_VERSION);
    }
}
