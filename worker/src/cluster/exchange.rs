//! Keyed-exchange channels that cross TaskManagers. In one process a channel is a bounded
//! crossbeam queue; when producer and consumer run in different TaskManagers the graph
//! builder hands out the same queue type, and a pump on each side moves its messages over a
//! TCP connection of its own. One connection per channel keeps backpressure exact: a consumer
//! blocked in barrier alignment stops reading only that connection, TCP flow control fills,
//! and only that producer's queue blocks, exactly as in local mode. The channel ends and the
//! frames they read and write are the runtime's (`runtime::remote`); this module moves the
//! frames.

use std::io::{BufReader, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::frame::{read_frame, write_frame};
use super::tls::Connection;
use super::wire::{ChannelId, StoreResolver};
use crate::error::{Error, Result};
use crate::runtime::remote::{IncomingChannel, NextFrame, OutgoingChannel};

/// Socket buffer per direction; about one batch of small records.
const SOCKET_BUFFER: usize = 64 << 10;

fn net_error(id: ChannelId, e: std::io::Error) -> Error {
    Error::io(format!("data connection of {id}"), e)
}

/// Drains the producer's queue of `channel` into `stream`. Runs until end of stream (Ok),
/// cancellation, or a broken connection.
pub(crate) fn pump_outgoing(
    mut channel: Box<dyn OutgoingChannel>,
    stream: Connection,
    cancelled: &AtomicBool,
) -> Result<()> {
    let id = channel.id();
    let mut out = BufWriter::with_capacity(SOCKET_BUFFER, stream);
    let mut payload = Vec::with_capacity(SOCKET_BUFFER);
    let metrics = crate::metrics::global();
    loop {
        payload.clear();
        // The producer gone without an end of stream is an error: closing the connection
        // tells the consumer.
        let end = match channel.next_frame(Duration::from_millis(200), &mut payload)? {
            NextFrame::Frame { end } => end,
            NextFrame::Timeout => {
                if cancelled.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled);
                }
                continue;
            }
        };
        write_frame(&mut out, &payload).map_err(|e| net_error(id, e))?;
        metrics.network_bytes_sent.inc_by(payload.len() as u64 + 4);
        if end || channel.is_drained() {
            out.flush().map_err(|e| net_error(id, e))?;
        }
        if end {
            return Ok(());
        }
    }
}

/// Fills the consumer's queue of `channel` from `stream`, until end of stream (Ok), the
/// consumer going away, or a broken connection.
pub(crate) fn pump_incoming(
    mut channel: Box<dyn IncomingChannel>,
    stream: Connection,
    stores: &dyn StoreResolver,
) -> Result<()> {
    let id = channel.id();
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
        // Blocks while the consumer is behind: that is the backpressure.
        if channel.deliver(&payload, stores)? {
            return Ok(());
        }
    }
}
