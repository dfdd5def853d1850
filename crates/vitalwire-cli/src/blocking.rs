//! A minimal blocking IO adapter over the sans-IO core, for the demo: any `Read + Write`
//! stream (a TCP socket here) carries handshake and transport frames.

use std::io::{self, Read, Write};

use bytes::BytesMut;
use vitalwire::{Error, Handshake, Incoming, Session, StreamDecoder};

/// Errors of the blocking adapter: IO or protocol.
#[derive(Debug)]
pub enum LinkError {
    Io(io::Error),
    Protocol(Error),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Io(e) => write!(f, "io: {e}"),
            LinkError::Protocol(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for LinkError {
    fn from(e: io::Error) -> Self {
        LinkError::Io(e)
    }
}

impl From<Error> for LinkError {
    fn from(e: Error) -> Self {
        LinkError::Protocol(e)
    }
}

/// A byte stream with a receive buffer and a frame decoder.
pub struct Link<S> {
    stream: S,
    recv: BytesMut,
    send: BytesMut,
    decoder: StreamDecoder,
}

impl<S: Read + Write> Link<S> {
    pub fn new(stream: S) -> Self {
        Link {
            stream,
            recv: BytesMut::with_capacity(8192),
            send: BytesMut::with_capacity(8192),
            decoder: StreamDecoder::new(1024),
        }
    }

    /// The next frame body, or `None` at a clean end of stream (between frames).
    pub fn read_frame(&mut self) -> Result<Option<BytesMut>, LinkError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.recv).map_err(Error::from)? {
                return Ok(Some(frame));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                self.decoder.finish(&self.recv).map_err(Error::from)?;
                return Ok(None);
            }
            self.recv.extend_from_slice(&chunk[..n]);
        }
    }

    /// Writes everything queued in the send buffer.
    pub fn flush(&mut self) -> Result<(), LinkError> {
        if !self.send.is_empty() {
            self.stream.write_all(&self.send)?;
            self.send.clear();
        }
        self.stream.flush()?;
        Ok(())
    }

    /// Runs a handshake to the end (then call `into_session`). On failure, whatever the
    /// handshake queued for the peer (a REJECT, an encrypted CLOSE) is sent first.
    pub fn handshake(&mut self, hs: &mut Handshake) -> Result<(), LinkError> {
        self.decoder.set_max_frame_len(hs.max_frame_len());
        while !hs.is_finished() {
            while hs.wants_write() {
                let r = hs.write_message(&mut self.send);
                self.flush()?;
                r?;
                if let Some(e) = hs.error() {
                    return Err(e.into());
                }
            }
            if hs.is_finished() {
                break;
            }
            let Some(frame) = self.read_frame()? else {
                return Err(Error::Truncated.into());
            };
            if let Err(e) = hs.read_message(&frame) {
                if hs.wants_write() {
                    let _ = hs.write_message(&mut self.send);
                    let _ = self.flush();
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Sets the frame limit for the session phase.
    pub fn start_session(&mut self, session: &Session) {
        self.decoder.set_max_frame_len(session.max_frame_len());
    }

    /// Reads and opens the next transport frame; answers PINGs and CLOSEs. `None` at a clean
    /// end of stream after the peer's CLOSE.
    pub fn receive(&mut self, session: &mut Session) -> Result<Option<Incoming>, LinkError> {
        match self.read_frame()? {
            None => {
                session.handle_eof()?;
                Ok(None)
            }
            Some(frame) => {
                let result = session.open(frame);
                if session.poll_transmit(&mut self.send) {
                    self.flush()?;
                }
                Ok(Some(result?))
            }
        }
    }

    /// The send buffer, for sealing into.
    pub fn send_buf(&mut self) -> &mut BytesMut {
        &mut self.send
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}
