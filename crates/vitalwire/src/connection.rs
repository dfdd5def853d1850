//! One connection over a byte stream as a single runtime object: the handshake, then the
//! session, behind one type whose phase changes as bytes flow. The typestate API
//! ([`Handshake`] consumed into [`Session`]) is the primary one; this wrapper serves callers
//! that cannot consume objects (the language bindings) or want the simplest possible loop:
//!
//! ```text
//! loop { link.write(conn.take_output()); for m in conn.receive(link.read())? { ... } }
//! ```

use alloc::vec::Vec;

use bytes::BytesMut;

use crate::error::Error;
use crate::events::{SecurityEvent, Timestamp};
use crate::frame::CloseCode;
use crate::handshake::Handshake;
use crate::session::{Incoming, Session};
use crate::stream::StreamDecoder;
use crate::timers::TimerConfig;

enum Phase {
    Handshaking(alloc::boxed::Box<Handshake>),
    Established(alloc::boxed::Box<Session>),
    Failed(Error),
}

/// Where a [`Connection`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// The handshake is running.
    Handshaking,
    /// The session carries data.
    Established,
    /// The session ended with CLOSE frames.
    Closed,
    /// A fatal error ended it.
    Failed,
}

/// A handshake followed by its session, fed with received bytes.
pub struct Connection {
    phase: Phase,
    recv: BytesMut,
    out: BytesMut,
    decoder: StreamDecoder,
    events: Vec<SecurityEvent>,
    now: Timestamp,
    timers: Option<TimerConfig>,
}

impl core::fmt::Debug for Connection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection").field("state", &self.state()).finish_non_exhaustive()
    }
}

impl Connection {
    /// Wraps a handshake (initiator or responder); the initiator's HELLO is ready at once in
    /// [`Connection::take_output`].
    pub fn new(handshake: Handshake) -> Result<Self, Error> {
        let mut c = Connection {
            decoder: StreamDecoder::new(handshake.max_frame_len()),
            phase: Phase::Handshaking(alloc::boxed::Box::new(handshake)),
            recv: BytesMut::new(),
            out: BytesMut::new(),
            events: Vec::new(),
            now: Timestamp(0),
            timers: None,
        };
        c.advance()?;
        Ok(c)
    }

    /// The phase.
    pub fn state(&self) -> ConnectionState {
        match &self.phase {
            Phase::Handshaking(_) => ConnectionState::Handshaking,
            Phase::Established(s) if s.is_closed() => ConnectionState::Closed,
            Phase::Established(_) => ConnectionState::Established,
            Phase::Failed(_) => ConnectionState::Failed,
        }
    }

    /// The session, once established.
    pub fn session(&self) -> Option<&Session> {
        match &self.phase {
            Phase::Established(s) => Some(s),
            _ => None,
        }
    }

    /// The handshake, while it runs.
    pub fn handshake(&self) -> Option<&Handshake> {
        match &self.phase {
            Phase::Handshaking(h) => Some(h),
            _ => None,
        }
    }

    /// Bytes to put on the link now (handshake messages, PONGs, CLOSEs), taken out.
    pub fn take_output(&mut self) -> BytesMut {
        self.out.split()
    }

    /// Replaces the session's timer settings (spec §7.4; default [`TimerConfig::default`]):
    /// at once if the session is up, else when the handshake finishes.
    pub fn set_timers(&mut self, config: TimerConfig) {
        self.timers = Some(config);
        if let Phase::Established(s) = &mut self.phase {
            s.set_timers(config);
        }
    }

    /// Sets the time stamped on events (call before each input when events matter).
    pub fn set_time(&mut self, now: Timestamp) {
        self.now = now;
    }

    fn drain_events(&mut self) {
        let now = self.now;
        match &mut self.phase {
            Phase::Handshaking(h) => self.events.extend(core::iter::from_fn(|| h.poll_event(now))),
            Phase::Established(s) => self.events.extend(core::iter::from_fn(|| s.poll_event(now))),
            Phase::Failed(_) => {}
        }
    }

    /// Writes what the handshake wants to send; promotes a finished one to a session.
    fn advance(&mut self) -> Result<(), Error> {
        let Phase::Handshaking(h) = &mut self.phase else { return Ok(()) };
        while h.wants_write() {
            h.write_message(&mut self.out)?;
            if let Some(e) = h.error() {
                return Err(e);
            }
        }
        if h.is_finished() {
            self.drain_events();
            if let Phase::Handshaking(h) = core::mem::replace(&mut self.phase, Phase::Failed(Error::Closed)) {
                let mut session = h.into_session()?;
                if let Some(timers) = self.timers {
                    session.set_timers(timers);
                }
                self.decoder.set_max_frame_len(session.max_frame_len());
                self.phase = Phase::Established(alloc::boxed::Box::new(session));
            }
        }
        Ok(())
    }

    /// Records a fatal error (queuing whatever the peer should hear) and returns it.
    fn fail(&mut self, e: Error) -> Error {
        self.drain_events();
        if !e.is_fatal() {
            return e;
        }
        match &mut self.phase {
            Phase::Established(s) => {
                s.poll_transmit(&mut self.out);
            }
            Phase::Handshaking(h) => {
                while h.wants_write() && h.write_message(&mut self.out).is_ok() {}
                let now = self.now;
                self.events.extend(core::iter::from_fn(|| h.poll_event(now)));
            }
            Phase::Failed(first) => return *first,
        }
        self.phase = Phase::Failed(e);
        e
    }

    /// Feeds bytes from the link; returns what they completed. On a fatal error the connection
    /// stays failed and what it queued for the peer is in [`Connection::take_output`]; a
    /// non-fatal one (an unknown frame kind) is returned once and the connection goes on.
    pub fn receive(&mut self, data: &[u8]) -> Result<Vec<Incoming>, Error> {
        if let Phase::Failed(e) = self.phase {
            return Err(e);
        }
        self.recv.extend_from_slice(data);
        let mut received = Vec::new();
        loop {
            let frame = match self.decoder.decode(&mut self.recv) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let e = match &mut self.phase {
                        Phase::Established(s) => s.handle_decode_error(e),
                        _ => Error::Decode(e),
                    };
                    return Err(self.fail(e));
                }
            };
            match &mut self.phase {
                Phase::Handshaking(h) => {
                    let read = h.read_message(&frame);
                    if let Err(e) = read.and_then(|()| self.advance()) {
                        return Err(self.fail(e));
                    }
                }
                Phase::Established(s) => {
                    let r = s.open(frame);
                    s.poll_transmit(&mut self.out);
                    match r {
                        Ok(incoming) => received.push(incoming),
                        Err(e) => return Err(self.fail(e)),
                    }
                }
                Phase::Failed(e) => return Err(*e),
            }
        }
        self.drain_events();
        Ok(received)
    }

    fn with_session<R>(
        &mut self,
        f: impl FnOnce(&mut Session, &mut BytesMut) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let r = match &mut self.phase {
            Phase::Established(s) => f(s, &mut self.out),
            Phase::Handshaking(_) => return Err(Error::Config("the handshake is not finished")),
            Phase::Failed(e) => return Err(*e),
        };
        self.drain_events();
        r.map_err(|e| self.fail(e))
    }

    /// Seals one DATA frame; returns its bytes.
    pub fn send(&mut self, channel: u8, payload: &[u8]) -> Result<BytesMut, Error> {
        self.with_session(|s, _| {
            let mut out = BytesMut::with_capacity(payload.len() + 32);
            s.seal_data(channel, payload, &mut out).map(|()| out)
        })
    }

    /// Seals a message of any size up to the negotiated limit (fragmented when needed).
    pub fn send_message(&mut self, channel: u8, message: &[u8]) -> Result<BytesMut, Error> {
        self.with_session(|s, _| {
            let mut out = BytesMut::with_capacity(message.len() + 64);
            s.seal_message(channel, message, &mut out).map(|()| out)
        })
    }

    /// Rolls the sending key now; returns the REKEY frame.
    pub fn rekey(&mut self) -> Result<BytesMut, Error> {
        self.with_session(|s, _| {
            let mut out = BytesMut::new();
            s.rekey(&mut out).map(|()| out)
        })
    }

    /// A PING with 8 opaque bytes; returns the frame.
    pub fn ping(&mut self, opaque: [u8; 8]) -> Result<BytesMut, Error> {
        self.with_session(|s, _| {
            let mut out = BytesMut::new();
            s.send_ping(opaque, &mut out).map(|()| out)
        })
    }

    /// Closes with `code`; returns the CLOSE frame.
    pub fn close(&mut self, code: CloseCode) -> Result<BytesMut, Error> {
        self.with_session(|s, _| {
            let mut out = BytesMut::new();
            s.close(code, &mut out).map(|()| out)
        })
    }

    /// The link ended: `Ok` only after the peer's CLOSE.
    pub fn end_of_stream(&mut self) -> Result<(), Error> {
        if !self.recv.is_empty() {
            let e = Error::Decode(crate::error::DecodeError::IncompleteFrame { buffered: self.recv.len() });
            return Err(self.fail(e));
        }
        match &mut self.phase {
            Phase::Established(s) => {
                let r = s.handle_eof();
                self.drain_events();
                r
            }
            Phase::Handshaking(_) => Err(self.fail(Error::Truncated)),
            Phase::Failed(e) => Err(*e),
        }
    }

    /// Runs the timers at `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), Error> {
        self.now = now;
        let r = match &mut self.phase {
            Phase::Handshaking(h) => h.handle_timeout(now),
            Phase::Established(s) => {
                let r = s.handle_timeout(now);
                s.poll_transmit(&mut self.out);
                r
            }
            Phase::Failed(e) => return Err(*e),
        };
        self.drain_events();
        r.map_err(|e| self.fail(e))
    }

    /// When to call [`Connection::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match &self.phase {
            Phase::Handshaking(h) => h.poll_timeout(),
            Phase::Established(s) => s.poll_timeout(),
            Phase::Failed(_) => None,
        }
    }

    /// The security events since the last call.
    pub fn take_events(&mut self) -> Vec<SecurityEvent> {
        self.drain_events();
        core::mem::take(&mut self.events)
    }
}
