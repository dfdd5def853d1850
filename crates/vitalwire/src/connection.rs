//! One connection over a byte stream as a single runtime object: the handshake, then the
//! session, behind one type whose phase changes as bytes flow. The typestate API
//! ([`Handshake`] consumed into [`Session`]) is the primary one; this wrapper serves callers
//! that cannot consume objects (the language bindings) or want the simplest possible loop:
//!
//! ```text
//! loop { link.write(conn.take_output()); for m in conn.receive(link.read())? { ... } }
//! ```
//!
//! Every message that authenticated is delivered: an authentic frame of unknown kind between
//! two DATA frames is discarded and reported as an event (spec §5.3), and a fatal error is
//! reported only after the messages authenticated before it in the same input.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use bytes::BytesMut;

use crate::error::Error;
use crate::events::{SecurityEvent, Timestamp, EVENT_QUEUE_CAPACITY};
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
    /// Drained from the handshake or session, waiting for [`Connection::take_events`];
    /// bounded like their own queues (the oldest is dropped and counted).
    events: VecDeque<SecurityEvent>,
    events_dropped: u64,
    /// Whether the error of `Phase::Failed` has been returned to the caller yet (it is held
    /// back while messages authenticated before it are delivered).
    error_reported: bool,
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
            events: VecDeque::new(),
            events_dropped: 0,
            error_reported: true,
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
        loop {
            let event = match &mut self.phase {
                Phase::Handshaking(h) => h.poll_event(now),
                Phase::Established(s) => s.poll_event(now),
                Phase::Failed(_) => None,
            };
            match event {
                Some(e) => self.push_event(e),
                None => break,
            }
        }
    }

    fn push_event(&mut self, event: SecurityEvent) {
        if self.events.len() >= EVENT_QUEUE_CAPACITY {
            self.events.pop_front();
            self.events_dropped = self.events_dropped.saturating_add(1);
        }
        self.events.push_back(event);
    }

    /// The error of a failed connection, now reported to the caller.
    fn failed_error(&mut self) -> Option<Error> {
        match self.phase {
            Phase::Failed(e) => {
                self.error_reported = true;
                Some(e)
            }
            _ => None,
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

    /// Records a fatal error (queuing whatever the peer should hear) and returns it. A
    /// non-fatal one leaves the connection as it was.
    fn fail(&mut self, e: Error) -> Error {
        self.drain_events();
        if !e.is_fatal() {
            return e;
        }
        match &mut self.phase {
            Phase::Established(s) => {
                s.poll_transmit(&mut self.out);
            }
            Phase::Handshaking(h) => while h.wants_write() && h.write_message(&mut self.out).is_ok() {},
            Phase::Failed(_) => {}
        }
        // The REJECT or CLOSE just written may have queued events.
        self.drain_events();
        if !matches!(self.phase, Phase::Failed(_)) {
            self.phase = Phase::Failed(e);
        }
        self.failed_error().unwrap_or(e)
    }

    /// Feeds bytes from the link; returns every message they completed, in order.
    ///
    /// - An authentic frame of unknown kind is discarded (spec §5.3): it is reported as an
    ///   `unknown_frame_kind` event ([`Connection::take_events`]), never as an error, and the
    ///   frames around it are delivered.
    /// - A fatal error fails the connection at once: [`Connection::state`] is `Failed` and
    ///   what it queued for the peer (a CLOSE with the reason, a REJECT) is in
    ///   [`Connection::take_output`]. If messages authenticated before the error in this
    ///   input, they are returned now and the error is returned by the next call (this one
    ///   again, with any input, or [`Connection::handle_timeout`], which
    ///   [`Connection::poll_timeout`] schedules at once); otherwise the error is returned now.
    ///   Authenticated data is never dropped because of what followed it.
    pub fn receive(&mut self, data: &[u8]) -> Result<Vec<Incoming>, Error> {
        if let Some(e) = self.failed_error() {
            return Err(e);
        }
        self.recv.extend_from_slice(data);
        let mut received = Vec::new();
        let mut error = None;
        loop {
            let frame = match self.decoder.decode(&mut self.recv) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let e = match &mut self.phase {
                        Phase::Established(s) => s.handle_decode_error(e),
                        _ => Error::Decode(e),
                    };
                    error = Some(self.fail(e));
                    break;
                }
            };
            let r = match &mut self.phase {
                Phase::Handshaking(h) => h.read_message(&frame).and_then(|()| self.advance()).map(|()| None),
                Phase::Established(s) => {
                    let r = s.open(frame);
                    s.poll_transmit(&mut self.out);
                    r.map(Some)
                }
                Phase::Failed(e) => Err(*e),
            };
            match r {
                Ok(Some(incoming)) => received.push(incoming),
                Ok(None) => {}
                // Discarded by the session (an unknown kind, recorded as an event).
                Err(e) if !e.is_fatal() => {}
                Err(e) => {
                    error = Some(self.fail(e));
                    break;
                }
            }
        }
        self.drain_events();
        match error {
            Some(_) if !received.is_empty() => {
                // Deliver what authenticated first; the error waits for the next call.
                self.error_reported = false;
                Ok(received)
            }
            Some(e) => Err(e),
            None => Ok(received),
        }
    }

    fn with_session<R>(
        &mut self,
        f: impl FnOnce(&mut Session, &mut BytesMut) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let r = match &mut self.phase {
            Phase::Established(s) => f(s, &mut self.out),
            Phase::Handshaking(_) => return Err(Error::Config("the handshake is not finished")),
            Phase::Failed(_) => return Err(self.failed_error().unwrap_or(Error::Closed)),
        };
        self.drain_events();
        r.map_err(|e| self.fail(e))
    }

    /// Seals with `seal` after everything already due to the peer, and returns it all: the
    /// frames queued by earlier calls (PONGs, keepalives, the key-confirming PING of IK/KK,
    /// spec §4.8) and then the new one, in the order they were sealed. Writing the returned
    /// bytes as they come keeps the nonces in order, whichever call a caller writes first;
    /// on an error nothing queued is lost.
    fn seal_after_pending(
        &mut self,
        capacity: usize,
        seal: impl FnOnce(&mut Session, &mut BytesMut) -> Result<(), Error>,
    ) -> Result<BytesMut, Error> {
        // Only what is already sealed: frames the session has merely scheduled are sealed
        // when polled, after this one, and a first DATA frame confirms an IK/KK key by itself.
        self.with_session(|s, pending| {
            let mut out = pending.split();
            out.reserve(capacity);
            match seal(s, &mut out) {
                Ok(()) => Ok(out),
                Err(e) => {
                    pending.unsplit(out);
                    Err(e)
                }
            }
        })
    }

    /// Seals one DATA frame; returns its bytes, after any frames already due (see
    /// [`Connection::take_output`]).
    pub fn send(&mut self, channel: u8, payload: &[u8]) -> Result<BytesMut, Error> {
        self.seal_after_pending(payload.len() + 32, |s, out| s.seal_data(channel, payload, out))
    }

    /// Seals a message of any size up to the negotiated limit (fragmented when needed).
    pub fn send_message(&mut self, channel: u8, message: &[u8]) -> Result<BytesMut, Error> {
        self.seal_after_pending(message.len() + 64, |s, out| s.seal_message(channel, message, out))
    }

    /// Rolls the sending key now; returns the REKEY frame (after any frames already due).
    pub fn rekey(&mut self) -> Result<BytesMut, Error> {
        self.seal_after_pending(32, |s, out| s.rekey(out))
    }

    /// A PING with 8 opaque bytes; returns the frame (after any frames already due).
    pub fn ping(&mut self, opaque: [u8; 8]) -> Result<BytesMut, Error> {
        self.seal_after_pending(32, |s, out| s.send_ping(opaque, out))
    }

    /// Closes with `code`; returns the CLOSE frame (after any frames already due).
    pub fn close(&mut self, code: CloseCode) -> Result<BytesMut, Error> {
        self.seal_after_pending(32, |s, out| s.close(code, out))
    }

    /// Seals a frame with an arbitrary header (unknown kinds, reserved flags), to test how a
    /// peer handles authentic frames that break the rules.
    #[doc(hidden)]
    pub fn send_raw_for_testing_only(
        &mut self,
        kind: u8,
        flags: u8,
        channel: u8,
        payload: &[u8],
    ) -> Result<BytesMut, Error> {
        self.seal_after_pending(payload.len() + 32, |s, out| {
            s.seal_raw_for_testing_only(kind, flags, channel, payload, out)
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
            Phase::Failed(_) => Err(self.failed_error().unwrap_or(Error::Truncated)),
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
            Phase::Failed(_) => return Err(self.failed_error().unwrap_or(Error::Closed)),
        };
        self.drain_events();
        r.map_err(|e| self.fail(e))
    }

    /// When to call [`Connection::handle_timeout`] next: at once (the last time passed in)
    /// while a fatal error found by [`Connection::receive`] has not been returned yet.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match &self.phase {
            Phase::Handshaking(h) => h.poll_timeout(),
            Phase::Established(s) => s.poll_timeout(),
            Phase::Failed(_) if !self.error_reported => Some(self.now),
            Phase::Failed(_) => None,
        }
    }

    /// The error that failed the connection, if one did.
    pub fn error(&self) -> Option<Error> {
        match self.phase {
            Phase::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The security events since the last call (at most
    /// [`EVENT_QUEUE_CAPACITY`] are kept between calls; older ones are dropped and counted
    /// in [`Connection::events_dropped`]).
    pub fn take_events(&mut self) -> Vec<SecurityEvent> {
        self.drain_events();
        core::mem::take(&mut self.events).into()
    }

    /// Events dropped so far because [`Connection::take_events`] was not called often enough
    /// (the handshake's and session's own queues count theirs in their security counters).
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }
}
