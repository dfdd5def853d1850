//! Stream framing: splitting a byte stream (TCP, UART, BLE L2CAP) into frames
//! (spec/PROTOCOL.md §2).
//!
//! ```text
//! +----------------+--------------------------+
//! | length: u16 BE | body (length bytes)      |
//! +----------------+--------------------------+
//! ```
//!
//! The length is checked against the maximum *before* any memory is reserved for the body.
//! `Ok(None)` means "need more bytes"; `Err` means the stream is invalid and must be closed.

use bytes::{Buf, BytesMut};

use crate::error::DecodeError;

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 2;

/// Splits length-prefixed frames out of a receive buffer without copying.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    max_frame_len: usize,
}

impl StreamDecoder {
    /// A decoder that accepts bodies of up to `max_frame_len` bytes (at most 65535).
    pub fn new(max_frame_len: usize) -> Self {
        StreamDecoder { max_frame_len: max_frame_len.min(u16::MAX as usize) }
    }

    /// The largest body accepted.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Changes the limit (after the handshake, to this side's announced limit).
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len.min(u16::MAX as usize);
    }

    /// Takes the next complete frame body off the front of `buf`, if there is one.
    ///
    /// The returned `BytesMut` shares `buf`'s allocation: no copy, and no allocation once
    /// `buf` is shared. When the frame is incomplete, reserves room for the rest (bounded by
    /// the checked length) and returns `Ok(None)`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, DecodeError> {
        match self.frame_len(buf)? {
            Some(len) => {
                buf.advance(LENGTH_PREFIX_LEN);
                Ok(Some(buf.split_to(len)))
            }
            None => {
                if let Some(len) = self.announced_len(buf) {
                    buf.reserve(LENGTH_PREFIX_LEN + len - buf.len());
                }
                Ok(None)
            }
        }
    }

    /// The length of the complete frame body at the front of `buf`, if there is one: the body
    /// is `buf[LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + len]`. For receive buffers that are
    /// plain slices (with [`crate::Session::open_in_place`]). `Ok(None)` means "need more
    /// bytes"; an error means the stream is invalid and must be closed.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some(len) = self.announced_len(buf) else {
            return Ok(None);
        };
        // spec §2: "a receiver MUST reject a length of zero or above its maximum before
        // buffering the body".
        if len == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        if len > self.max_frame_len {
            return Err(DecodeError::FrameTooLarge { len, max: self.max_frame_len });
        }
        Ok((buf.len() >= LENGTH_PREFIX_LEN + len).then_some(len))
    }

    /// The length prefix at the front of `buf`, if it is all there.
    fn announced_len(&self, buf: &[u8]) -> Option<usize> {
        match buf {
            [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo]) as usize),
            _ => None,
        }
    }

    /// Called at end of stream: leftover bytes mean the stream was cut inside a frame.
    pub fn finish(&self, buf: &BytesMut) -> Result<(), DecodeError> {
        if buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::IncompleteFrame { buffered: buf.len() })
        }
    }
}

/// Appends a length prefix and `body` to `out` (handshake frames; transport frames are
/// written in place by the session).
pub fn write_frame(out: &mut BytesMut, body: &[u8]) -> Result<(), DecodeError> {
    if body.is_empty() {
        return Err(DecodeError::EmptyFrame);
    }
    let len = u16::try_from(body.len())
        .map_err(|_| DecodeError::FrameTooLarge { len: body.len(), max: u16::MAX as usize })?;
    out.reserve(LENGTH_PREFIX_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_fed_one_byte_at_a_time() {
        let mut wire = BytesMut::new();
        write_frame(&mut wire, b"abc").unwrap();
        write_frame(&mut wire, b"de").unwrap();
        let mut dec = StreamDecoder::new(100);
        let mut buf = BytesMut::new();
        let mut got = alloc::vec::Vec::new();
        for b in wire.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f.to_vec());
            }
        }
        assert_eq!(got, [b"abc".to_vec(), b"de".to_vec()]);
        assert_eq!(dec.finish(&buf), Ok(()));
    }

    #[test]
    fn oversized_length_is_rejected_before_reserving() {
        let mut dec = StreamDecoder::new(64);
        let mut buf = BytesMut::from(&[0x00, 0x41][..]);
        assert_eq!(dec.decode(&mut buf), Err(DecodeError::FrameTooLarge { len: 65, max: 64 }));
        assert!(buf.capacity() < 64, "nothing reserved for a rejected length");
        let mut buf = BytesMut::from(&[0x00, 0x00][..]);
        assert_eq!(dec.decode(&mut buf), Err(DecodeError::EmptyFrame));
    }

    #[test]
    fn frame_len_agrees_with_decode_on_slices() {
        let mut wire = BytesMut::new();
        write_frame(&mut wire, b"abc").unwrap();
        let dec = StreamDecoder::new(100);
        assert_eq!(dec.frame_len(&wire[..1]), Ok(None));
        assert_eq!(dec.frame_len(&wire[..4]), Ok(None));
        assert_eq!(dec.frame_len(&wire), Ok(Some(3)));
        assert_eq!(&wire[LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + 3], b"abc");
        assert_eq!(
            StreamDecoder::new(2).frame_len(&wire),
            Err(DecodeError::FrameTooLarge { len: 3, max: 2 })
        );
        assert_eq!(dec.frame_len(&[0, 0]), Err(DecodeError::EmptyFrame));
    }

    #[test]
    fn eof_inside_a_frame_is_reported() {
        let mut dec = StreamDecoder::new(64);
        let mut buf = BytesMut::from(&[0x00, 0x05, 1, 2][..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert_eq!(dec.finish(&buf), Err(DecodeError::IncompleteFrame { buffered: 4 }));
    }
}
