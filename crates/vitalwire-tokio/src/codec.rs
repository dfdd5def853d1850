//! A `tokio-util` codec for vitalwire stream framing: the decoder yields frame bodies (the
//! length is checked against the limit before any memory is reserved); the encoder passes
//! through bytes the core has already framed (handshake frames, sealed transport frames).

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};
use vitalwire::StreamDecoder;

/// What can go wrong on a framed link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The byte stream failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes were not valid framing.
    #[error(transparent)]
    Protocol(#[from] vitalwire::Error),
}

impl From<vitalwire::DecodeError> for LinkError {
    fn from(e: vitalwire::DecodeError) -> Self {
        LinkError::Protocol(e.into())
    }
}

impl LinkError {
    /// As a protocol error: a broken stream counts as a truncated one.
    pub fn into_protocol(self) -> vitalwire::Error {
        match self {
            LinkError::Io(_) => vitalwire::Error::Truncated,
            LinkError::Protocol(e) => e,
        }
    }
}

/// Stream framing for a [`tokio_util::codec::Framed`] transport.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    decoder: StreamDecoder,
}

impl FrameCodec {
    /// A codec accepting frame bodies up to `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        FrameCodec { decoder: StreamDecoder::new(max_frame_len) }
    }

    /// Changes the limit (after the handshake, to the session's).
    pub fn set_max_frame_len(&mut self, max: usize) {
        self.decoder.set_max_frame_len(max);
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = LinkError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Self::Error> {
        Ok(self.decoder.decode(src)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Self::Error> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                self.decoder.finish(src)?;
                Ok(None)
            }
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = LinkError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), Self::Error> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_bodies_and_reports_a_cut_stream() {
        let mut c = FrameCodec::new(16);
        let mut buf = BytesMut::from(&b"\x00\x02hi\x00\x05ab"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap(), &b"hi"[..]);
        assert_eq!(c.decode(&mut buf).unwrap(), None);
        assert!(c.decode_eof(&mut buf).is_err());
        let mut big = BytesMut::from(&b"\x01\x00"[..]);
        assert!(c.decode(&mut big).is_err());
    }
}
