//! The ends of channels whose other end runs in another process, and the bytes their
//! messages travel as.
//!
//! The graph builder hands a task the same bounded queue whether its peer is local or not;
//! for a remote peer it also hands out the queue's other end as an [`OutgoingChannel`] or
//! [`IncomingChannel`]. These only turn messages into data frames and back: moving the
//! frames over connections is the network layer's (`cluster::exchange`). The frames are part
//! of the protocol `cluster::wire::PROTOCOL_VERSION` versions: change them only with it.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde::{Deserialize, Serialize};

use super::{Barrier, Message, SavepointTarget};
use crate::error::{Error, Result};
use crate::storage::ObjectStore;
use crate::types::{Data, Watermark};

/// Identifies one producer -> consumer channel of a keyed exchange within an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChannelId {
    /// Index of the exchange in graph-building order (the same in every process).
    pub exchange: u32,
    pub producer: u32,
    pub consumer: u32,
}

impl std::fmt::Display for ChannelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exchange {} channel {}->{}",
            self.exchange, self.producer, self.consumer
        )
    }
}

/// A barrier as it travels: the savepoint directory by URI, reopened by the receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireBarrier {
    pub checkpoint_id: u64,
    pub timestamp_ms: u64,
    pub savepoint: Option<WireSavepoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSavepoint {
    pub uri: String,
    pub stop: bool,
}

impl From<&Barrier> for WireBarrier {
    fn from(barrier: &Barrier) -> Self {
        WireBarrier {
            checkpoint_id: barrier.checkpoint_id,
            timestamp_ms: barrier.timestamp_ms,
            savepoint: barrier.savepoint.as_ref().map(|s| WireSavepoint {
                uri: s.store.location().uri(),
                stop: s.stop,
            }),
        }
    }
}

impl WireBarrier {
    pub fn into_barrier(self, resolve: &dyn StoreResolver) -> Result<Barrier> {
        let savepoint = match self.savepoint {
            Some(s) => Some(SavepointTarget {
                store: resolve.open(&s.uri)?,
                stop: s.stop,
            }),
            None => None,
        };
        Ok(Barrier {
            checkpoint_id: self.checkpoint_id,
            timestamp_ms: self.timestamp_ms,
            savepoint,
        })
    }
}

/// Opens object stores by URI (savepoint directories named in barriers).
pub trait StoreResolver: Send + Sync {
    fn open(&self, uri: &str) -> Result<ObjectStore>;
}

/// One data frame: the serialized form of `runtime::Message`.
#[derive(Debug, Serialize, Deserialize)]
pub enum DataFrame<R> {
    Records(Vec<R>),
    Barrier(WireBarrier),
    EndOfStream,
    Watermark(Watermark),
}

/// Borrowing twin of `DataFrame` for encoding without copying the batch; postcard gives both
/// the same bytes (variant index, then the fields).
#[derive(Serialize)]
enum DataFrameRef<'a, R> {
    Records(&'a [R]),
    Barrier(&'a WireBarrier),
    EndOfStream,
    Watermark(Watermark),
}

/// Appends the encoding of `message` to `out`.
pub fn encode_data<R: Serialize>(message: &Message<R>, out: &mut Vec<u8>) -> Result<()> {
    let barrier;
    let frame = match message {
        Message::Records(records) => DataFrameRef::Records(records),
        Message::Barrier(b) => {
            barrier = WireBarrier::from(b);
            DataFrameRef::Barrier(&barrier)
        }
        Message::EndOfStream => DataFrameRef::EndOfStream,
        Message::Watermark(w) => DataFrameRef::Watermark(*w),
    };
    let encoded = std::mem::take(out);
    *out = postcard::to_extend(&frame, encoded).map_err(|e| Error::codec("data frame", e))?;
    Ok(())
}

/// Decodes one data frame payload. Never panics on arbitrary bytes (fuzzed).
pub fn decode_data<R: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<DataFrame<R>> {
    let (frame, rest) =
        postcard::take_from_bytes(payload).map_err(|e| Error::codec("data frame", e))?;
    if !rest.is_empty() {
        return Err(Error::codec(
            "data frame",
            format!("{} trailing bytes", rest.len()),
        ));
    }
    Ok(frame)
}

impl<R> DataFrame<R> {
    pub fn into_message(self, resolve: &dyn StoreResolver) -> Result<Message<R>> {
        Ok(match self {
            DataFrame::Records(records) => Message::Records(records),
            DataFrame::Barrier(b) => Message::Barrier(b.into_barrier(resolve)?),
            DataFrame::EndOfStream => Message::EndOfStream,
            DataFrame::Watermark(w) => Message::Watermark(w),
        })
    }
}

/// The producing end of a remote channel: the producer's queue, read one data frame at a time.
pub trait OutgoingChannel: Send {
    fn id(&self) -> ChannelId;
    /// Waits up to `timeout` for the producer's next message and appends its data frame to
    /// `out`. An error when the producer is gone without an end of stream (it failed or was
    /// cancelled).
    fn next_frame(&mut self, timeout: Duration, out: &mut Vec<u8>) -> Result<NextFrame>;
    /// Nothing more is queued right now (time to flush what was written).
    fn is_drained(&self) -> bool;
}

/// What [`OutgoingChannel::next_frame`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextFrame {
    /// A frame was appended; `end` when it carries the end of stream, the channel's last.
    Frame { end: bool },
    /// Nothing arrived within the timeout.
    Timeout,
}

/// The consuming end of a remote channel: the consumer's queue, filled one data frame at a time.
pub trait IncomingChannel: Send {
    fn id(&self) -> ChannelId;
    /// Decodes one data frame and hands its message to the consumer, blocking while the
    /// consumer is behind (that is the backpressure). `Ok(true)` after the end of stream;
    /// `Error::Cancelled` when the consumer is gone.
    fn deliver(&mut self, payload: &[u8], stores: &dyn StoreResolver) -> Result<bool>;
}

pub(crate) struct Outgoing<R> {
    pub id: ChannelId,
    pub queue: Receiver<Message<R>>,
}

pub(crate) struct Incoming<R> {
    pub id: ChannelId,
    pub queue: Sender<Message<R>>,
}

impl<R: Data> OutgoingChannel for Outgoing<R> {
    fn id(&self) -> ChannelId {
        self.id
    }

    fn next_frame(&mut self, timeout: Duration, out: &mut Vec<u8>) -> Result<NextFrame> {
        let message = match self.queue.recv_timeout(timeout) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => return Ok(NextFrame::Timeout),
            Err(RecvTimeoutError::Disconnected) => return Err(Error::Cancelled),
        };
        encode_data(&message, out)?;
        Ok(NextFrame::Frame {
            end: matches!(message, Message::EndOfStream),
        })
    }

    fn is_drained(&self) -> bool {
        self.queue.is_empty()
    }
}

impl<R: Data> IncomingChannel for Incoming<R> {
    fn id(&self) -> ChannelId {
        self.id
    }

    fn deliver(&mut self, payload: &[u8], stores: &dyn StoreResolver) -> Result<bool> {
        let frame: DataFrame<R> = decode_data(payload)?;
        let message = frame.into_message(stores)?;
        let end = matches!(message, Message::EndOfStream);
        if self.queue.send(message).is_err() {
            return Err(Error::Cancelled);
        }
        Ok(end)
    }
}
