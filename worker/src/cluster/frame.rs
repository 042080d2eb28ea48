//! Length-prefixed frames on a byte stream: `[u32 little-endian length][payload]`.
//!
//! Both the control connection (JobManager <-> TaskManager, JSON payloads) and the data
//! connections (records between TaskManagers, postcard payloads) use this framing. A frame
//! longer than `MAX_FRAME_BYTES` is refused on either side, so a corrupt length prefix can
//! never make a reader allocate gigabytes.

use std::io::{self, Read, Write};

/// Upper bound of one frame. A data frame holds one batch of records (`BATCH_SIZE`), so this
/// allows records of up to ~64 KiB each on average.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// Writes one frame. Buffering and flushing are the caller's business.
pub fn write_frame(out: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    if payload.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes exceeds the limit of {MAX_FRAME_BYTES}",
                payload.len()
            ),
        ));
    }
    out.write_all(&(payload.len() as u32).to_le_bytes())?;
    out.write_all(payload)
}

/// Reads one frame into `buf` (replacing its contents). `Ok(false)` on a clean end of stream
/// at a frame boundary; a stream that ends inside a frame is an error.
pub fn read_frame(input: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut header = [0u8; 4];
    let mut filled = 0;
    while filled < header.len() {
        match input.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = frame_length(header)?;
    buf.clear();
    buf.resize(len, 0);
    input.read_exact(buf)?;
    Ok(true)
}

fn frame_length(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} exceeds the limit of {MAX_FRAME_BYTES}"),
        ));
    }
    Ok(len)
}

/// Splits the first complete frame off `bytes`: `Ok(Some((payload, rest)))`, `Ok(None)` when
/// more bytes are needed. For decoding from memory (tests and fuzzing).
pub fn split_frame(bytes: &[u8]) -> io::Result<Option<(&[u8], &[u8])>> {
    let Some(header) = bytes.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = frame_length(*header)?;
    let rest = &bytes[4..];
    if rest.len() < len {
        return Ok(None);
    }
    Ok(Some(rest.split_at(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_clean_eof_is_not_an_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").unwrap();
        write_frame(&mut wire, b"").unwrap();
        let mut reader = wire.as_slice();
        let mut buf = Vec::new();
        assert!(read_frame(&mut reader, &mut buf).unwrap());
        assert_eq!(buf, b"hello");
        assert!(read_frame(&mut reader, &mut buf).unwrap());
        assert!(buf.is_empty());
        assert!(!read_frame(&mut reader, &mut buf).unwrap());
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").unwrap();
        let mut truncated = &wire[..6];
        assert!(read_frame(&mut truncated, &mut Vec::new()).is_err());
        let huge = (MAX_FRAME_BYTES as u32 + 1).to_le_bytes();
        assert!(read_frame(&mut huge.as_slice(), &mut Vec::new()).is_err());
        assert!(split_frame(&huge).is_err());
        assert_eq!(split_frame(&wire[..3]).unwrap(), None);
        let (payload, rest) = split_frame(&wire).unwrap().unwrap();
        assert_eq!((payload, rest), (&b"hello"[..], &[][..]));
    }
}
