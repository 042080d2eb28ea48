//! Keyed-exchange channels that cross TaskManagers. In one process a channel is a bounded
//! crossbeam queue; when producer and consumer run in different TaskManagers the graph
//! builder hands out the same queue type, and a pump on each side moves its messages over a
//! TCP connection of its own. One connection per channel keeps backpressure exact: a consumer
//! blocked in barrier alignment stops reading only that connection, TCP flow control fills,
//! and only that producer's queue blocks, exactly as in local mode.

use std::io::{BufReader, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::frame::{read_frame, write_frame};
use super::tls::Connection;
use super::wire::{ChannelId, DataFrame, StoreResolver, decode_data, encode_data};
use crate::api::Data;
use crate::error::{Error, Result};
use crate::runtime::Message;

/// Socket buffer per direction; about one batch of small records.
const SOCKET_BUFFER: usize = 64 << 10;

/// The producing end of a remote channel: drains the local queue into a connection.
pub trait OutgoingChannel: Send {
    fn id(&self) -> ChannelId;
    /// Runs until end of stream (Ok), cancellation, or a broken connection.
    fn pump(self: Box<Self>, stream: Connection, cancelled: &AtomicBool) -> Result<()>;
}

/// The consuming end of a remote channel: fills the local queue from a connection.
pub trait IncomingChannel: Send {
    fn id(&self) -> ChannelId;
    fn pump(self: Box<Self>, stream: Connection, stores: &dyn StoreResolver) -> Result<()>;
}

pub(crate) struct Outgoing<R> {
    pub id: ChannelId,
    pub queue: Receiver<Message<R>>,
}

pub(crate) struct Incoming<R> {
    pub id: ChannelId,
    pub queue: Sender<Message<R>>,
}

fn net_error(id: ChannelId, e: std::io::Error) -> Error {
    Error::io(format!("data connection of {id}"), e)
}

impl<R: Data> OutgoingChannel for Outgoing<R> {
    fn id(&self) -> ChannelId {
        self.id
    }

    fn pump(self: Box<Self>, stream: Connection, cancelled: &AtomicBool) -> Result<()> {
        let id = self.id;
        let mut out = BufWriter::with_capacity(SOCKET_BUFFER, stream);
        let mut payload = Vec::with_capacity(SOCKET_BUFFER);
        let metrics = crate::metrics::global();
        loop {
            let message = match self.queue.recv_timeout(Duration::from_millis(200)) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    if cancelled.load(Ordering::Relaxed) {
                        return Err(Error::Cancelled);
                    }
                    continue;
                }
                // The producer is gone without an end of stream (it failed or was
                // cancelled); closing the connection tells the consumer.
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Cancelled),
            };
            let end = matches!(message, Message::EndOfStream);
            payload.clear();
            encode_data(&message, &mut payload)?;
            write_frame(&mut out, &payload).map_err(|e| net_error(id, e))?;
            metrics.network_bytes_sent.inc_by(payload.len() as u64 + 4);
            if end || self.queue.is_empty() {
                out.flush().map_err(|e| net_error(id, e))?;
            }
            if end {
                return Ok(());
            }
        }
    }
}

impl<R: Data> IncomingChannel for Incoming<R> {
    fn id(&self) -> ChannelId {
        self.id
    }

    fn pump(self: Box<Self>, stream: Connection, stores: &dyn StoreResolver) -> Result<()> {
        let id = self.id;
        let mut input = BufReader::with_capacity(SOCKET_BUFFER, stream);
        let mut payload = Vec::with_capacity(SOCKET_BUFFER);
        let metrics = crate::metrics::global();
        loop {
            if !read_frame(&mut input, &mut payload).map_err(|e| net_error(id, e))? {
                // Dropping the queue's sender makes the consumer fail: its input ended
                // without an end of stream.
                return Err(net_error(
                    id,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "closed before end of stream",
                    ),
                ));
            }
            metrics
                .network_bytes_received
                .inc_by(payload.len() as u64 + 4);
            let frame: DataFrame<R> = decode_data(&payload)?;
            let message = frame.into_message(stores)?;
            let end = matches!(message, Message::EndOfStream);
            // Blocks while the consumer is behind: that is the backpressure.
            if self.queue.send(message).is_err() {
                return Err(Error::Cancelled);
            }
            if end {
                return Ok(());
            }
        }
    }
}
