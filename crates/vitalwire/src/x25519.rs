//! X25519, the Diffie-Hellman function of every handshake (spec/PROTOCOL.md §3.2), on one of
//! two backends that produce identical results:
//!
//! - [`Backend::AwsLc`] (feature `aws-lc`, on by default): aws-lc's X25519, formally verified
//!   assembly (s2n-bignum) on x86_64 and aarch64, about 2-2.5x faster per operation than the
//!   portable code on this project's benchmark machine (`benches/README.md`);
//! - [`Backend::Portable`]: curve25519-dalek's Montgomery ladder, pure Rust, the only backend
//!   without `std` (firmware).
//!
//! Both reject a Diffie-Hellman result of all zeros, which only a low-order public key can
//! produce (RFC 7748 §6.1): the handshake then fails as an authentication failure.
//!
//! snow asks this module for its `Dh` objects (`crate::noise`). The local static key's
//! public half is known in advance ([`Keypair`]), so setting it costs nothing: snow's own
//! implementation would recompute it (one scalar multiplication per handshake and side).
//!
//! With `std`, the static-static result `DH(s, rs)` of IK and KK (the `ss` token) is kept
//! per [`Keypair`] for the remote static keys the application configured (the host key a
//! device dials; on the host, the device key a KK HELLO names from the trust store), as
//! WireGuard precomputes it per peer: reconnecting to the same peer then costs one X25519
//! less on each side that knows the other's key in advance. The value is as secret as the
//! static private key (either one computes it), lives in its own heap allocation (so a growing
//! map never leaves copies behind), and is zeroized when evicted or dropped. The cache is an
//! LRU of at most [`STATIC_STATIC_CACHE_LEN`] peers, one per session the default host serves
//! (about 1.5 MB when full): the least recently used peer is evicted, so the devices that
//! reconnect keep their entries while a gateway's fleet churns. An attacker cannot add
//! entries (a key must be configured, or trusted, first).

use zeroize::Zeroizing;

use crate::keys::{Keypair, KEY_LEN};

/// Which implementation computes X25519.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// aws-lc (feature `aws-lc`; the default there).
    #[cfg(feature = "aws-lc")]
    #[default]
    AwsLc,
    /// curve25519-dalek (the default without the `aws-lc` feature).
    #[cfg_attr(not(feature = "aws-lc"), default)]
    Portable,
}

/// The failure of a Diffie-Hellman computation: the public key is a low-order point (the
/// result would be all zeros) or could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowOrderPoint;

/// A private key prepared for one backend.
pub(crate) enum Secret {
    Portable(Zeroizing<[u8; KEY_LEN]>),
    /// aws-lc holds the key in its own memory, which it zeroizes when the key is freed.
    #[cfg(feature = "aws-lc")]
    AwsLc(alloc::sync::Arc<aws_lc_rs::agreement::PrivateKey>),
}

impl Clone for Secret {
    fn clone(&self) -> Self {
        match self {
            Secret::Portable(k) => Secret::Portable(Zeroizing::new(**k)),
            #[cfg(feature = "aws-lc")]
            Secret::AwsLc(k) => Secret::AwsLc(k.clone()),
        }
    }
}

impl Secret {
    /// Prepares `private` for `backend` and returns it with its public key.
    pub(crate) fn new(backend: Backend, private: &[u8; KEY_LEN]) -> (Secret, [u8; KEY_LEN]) {
        match backend {
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc => {
                use aws_lc_rs::agreement::{PrivateKey, X25519};
                // A 32-byte key is always accepted; fall back to the portable code if aws-lc
                // ever refuses one rather than fail.
                if let Ok(key) = PrivateKey::from_private_key(&X25519, private) {
                    if let Ok(public) = key.compute_public_key() {
                        if let Ok(public) = <[u8; KEY_LEN]>::try_from(public.as_ref()) {
                            return (Secret::AwsLc(alloc::sync::Arc::new(key)), public);
                        }
                    }
                }
                Secret::new(Backend::Portable, private)
            }
            Backend::Portable => {
                let public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(*private).to_bytes();
                (Secret::Portable(Zeroizing::new(*private)), public)
            }
        }
    }

    /// `DH(private, public)`: the 32-byte shared secret, or an error for a low-order point.
    pub(crate) fn diffie_hellman(
        &self,
        public: &[u8; KEY_LEN],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, LowOrderPoint> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        match self {
            Secret::Portable(private) => {
                *out = curve25519_dalek::MontgomeryPoint(*public).mul_clamped(**private).to_bytes();
            }
            #[cfg(feature = "aws-lc")]
            Secret::AwsLc(private) => {
                use aws_lc_rs::agreement::{agree, UnparsedPublicKey, X25519};
                // aws-lc itself refuses an all-zero result.
                agree(private, UnparsedPublicKey::new(&X25519, &public[..]), LowOrderPoint, |s| {
                    out.copy_from_slice(s.get(..KEY_LEN).ok_or(LowOrderPoint)?);
                    Ok(())
                })?;
            }
        }
        // Constant time up to the verdict, which is public (the handshake aborts).
        if out.iter().fold(0u8, |acc, b| acc | b) == 0 {
            return Err(LowOrderPoint);
        }
        Ok(out)
    }
}

/// The public key of `private` (on the default backend).
pub fn public_key(private: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    Secret::new(Backend::default(), private).1
}

/// `DH(private, public)` on `backend`: the shared secret, or [`LowOrderPoint`].
pub fn diffie_hellman(
    backend: Backend,
    private: &[u8; KEY_LEN],
    public: &[u8; KEY_LEN],
) -> Result<Zeroizing<[u8; KEY_LEN]>, LowOrderPoint> {
    Secret::new(backend, private).0.diffie_hellman(public)
}

/// Peers whose static-static result a [`Keypair`] keeps (`std` only): as many as the
/// default host serves sessions (`vitalwire_tokio::HostConfig::max_sessions`).
pub const STATIC_STATIC_CACHE_LEN: usize = 10_000;

/// `DH(s, remote)` in its own allocation: moving the map's entries never copies the secret.
#[cfg(feature = "std")]
type Shared = alloc::boxed::Box<Zeroizing<[u8; KEY_LEN]>>;

/// The LRU state: each remote key's result and last use, and the keys by last use.
#[cfg(feature = "std")]
#[derive(Default)]
struct Lru {
    entries: std::collections::HashMap<[u8; KEY_LEN], (Shared, u64)>,
    by_use: alloc::collections::BTreeMap<u64, [u8; KEY_LEN]>,
    clock: u64,
}

/// The static-static results of one [`Keypair`], shared by its clones: an LRU of at most
/// `capacity` peers.
#[cfg(feature = "std")]
pub(crate) struct StaticStaticCache {
    lru: std::sync::Mutex<Lru>,
    capacity: usize,
}

#[cfg(feature = "std")]
impl Default for StaticStaticCache {
    fn default() -> Self {
        Self::with_capacity(STATIC_STATIC_CACHE_LEN)
    }
}

#[cfg(feature = "std")]
impl StaticStaticCache {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        StaticStaticCache { lru: Default::default(), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        self.lru.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `DH(s, remote)`, from the cache (marking it most recently used) or computed by
    /// `compute` and remembered, evicting the least recently used peer when full.
    fn get_or_compute(
        &self,
        remote: &[u8; KEY_LEN],
        compute: impl FnOnce() -> Result<Zeroizing<[u8; KEY_LEN]>, LowOrderPoint>,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, LowOrderPoint> {
        if let Some(shared) = self.touch(remote) {
            return Ok(shared);
        }
        // Computed outside the lock: other handshakes go on meanwhile.
        let shared = compute()?;
        let mut lru = self.lock();
        if self.capacity > 0 && !lru.entries.contains_key(remote) {
            while lru.entries.len() >= self.capacity {
                let Some((_, oldest)) = lru.by_use.pop_first() else { break };
                // Dropping the box zeroizes the evicted secret.
                lru.entries.remove(&oldest);
            }
            lru.clock += 1;
            let now = lru.clock;
            lru.by_use.insert(now, *remote);
            lru.entries.insert(*remote, (alloc::boxed::Box::new(shared.clone()), now));
        }
        Ok(shared)
    }

    /// The cached result for `remote`, now the most recently used.
    fn touch(&self, remote: &[u8; KEY_LEN]) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let mut lru = self.lock();
        lru.clock += 1;
        let now = lru.clock;
        let (shared, used) = lru.entries.get_mut(remote)?;
        let (value, before) = (Zeroizing::new(***shared), core::mem::replace(used, now));
        lru.by_use.remove(&before);
        lru.by_use.insert(now, *remote);
        Some(value)
    }

    /// Forgets every entry (zeroizing them): the next handshake with each peer is cold.
    pub(crate) fn clear(&self) {
        let mut lru = self.lock();
        lru.entries.clear();
        lru.by_use.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    #[cfg(test)]
    fn contains(&self, remote: &[u8; KEY_LEN]) -> bool {
        self.lock().entries.contains_key(remote)
    }
}

/// snow's `Dh` for X25519 on a chosen backend.
pub(crate) struct NoiseDh {
    backend: Backend,
    /// The local static keypair: when snow sets this private key, its prepared secret and
    /// public key are reused instead of recomputed.
    known: Keypair,
    /// The remote static key configured in advance (IK/KK), if any.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    remote: Option<[u8; KEY_LEN]>,
    /// Whether this object holds `known` (and not an ephemeral key).
    is_known: bool,
    private: Zeroizing<[u8; KEY_LEN]>,
    public: [u8; KEY_LEN],
    secret: Option<Secret>,
}

impl NoiseDh {
    pub(crate) fn new(backend: Backend, known: Keypair, remote: Option<[u8; KEY_LEN]>) -> Self {
        NoiseDh {
            backend,
            known,
            remote,
            is_known: false,
            private: Zeroizing::new([0; KEY_LEN]),
            public: [0; KEY_LEN],
            secret: None,
        }
    }

    /// Takes the private key by reference so no unzeroized copy of it is left on the stack.
    fn set_private(&mut self, private: &[u8; KEY_LEN]) {
        *self.private = *private;
        self.is_known = self.known.private().ct_eq(private) && self.known.backend() == self.backend;
        if self.is_known {
            self.public = *self.known.public().as_bytes();
            self.secret = Some(self.known.secret().clone());
            return;
        }
        let (secret, public) = Secret::new(self.backend, &self.private);
        self.public = public;
        self.secret = Some(secret);
    }
}

impl snow::types::Dh for NoiseDh {
    fn name(&self) -> &'static str {
        "25519"
    }
    fn pub_len(&self) -> usize {
        KEY_LEN
    }
    fn priv_len(&self) -> usize {
        KEY_LEN
    }
    fn set(&mut self, privkey: &[u8]) {
        let mut private = Zeroizing::new([0u8; KEY_LEN]);
        let n = privkey.len().min(KEY_LEN);
        private[..n].copy_from_slice(&privkey[..n]);
        self.set_private(&private);
    }
    fn generate(&mut self, rng: &mut dyn snow::types::Random) -> Result<(), snow::Error> {
        let mut private = Zeroizing::new([0u8; KEY_LEN]);
        rng.try_fill_bytes(&mut private[..])?;
        self.set_private(&private);
        Ok(())
    }
    fn pubkey(&self) -> &[u8] {
        &self.public
    }
    fn privkey(&self) -> &[u8] {
        &self.private[..]
    }
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let public: &[u8; KEY_LEN] =
            pubkey.get(..KEY_LEN).and_then(|p| p.try_into().ok()).ok_or(snow::Error::Dh)?;
        let secret = self.secret.as_ref().ok_or(snow::Error::Dh)?;
        let compute = || secret.diffie_hellman(public);
        #[cfg(feature = "std")]
        let shared = if self.is_known && self.remote.as_ref() == Some(public) {
            self.known.static_static().get_or_compute(public, compute)
        } else {
            compute()
        };
        #[cfg(not(feature = "std"))]
        let shared = compute();
        let shared = shared.map_err(|_| snow::Error::Dh)?;
        out.get_mut(..KEY_LEN).ok_or(snow::Error::Dh)?.copy_from_slice(&shared[..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    fn backends() -> alloc::vec::Vec<Backend> {
        alloc::vec![
            Backend::Portable,
            #[cfg(feature = "aws-lc")]
            Backend::AwsLc,
        ]
    }

    /// The low-order points of Curve25519 and their non-canonical encodings (libsodium's list).
    const LOW_ORDER: [&str; 7] = [
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0100000000000000000000000000000000000000000000000000000000000000",
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    ];

    #[test]
    fn rfc7748_section_6_1_on_every_backend() {
        let a = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let b = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
        let a_pub = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let b_pub = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        for backend in backends() {
            assert_eq!(Secret::new(backend, &a).1, a_pub, "{backend:?}");
            assert_eq!(Secret::new(backend, &b).1, b_pub, "{backend:?}");
            assert_eq!(*diffie_hellman(backend, &a, &b_pub).unwrap(), shared, "{backend:?}");
            assert_eq!(*diffie_hellman(backend, &b, &a_pub).unwrap(), shared, "{backend:?}");
        }
    }

    #[test]
    fn low_order_points_are_refused_by_every_backend() {
        for backend in backends() {
            for p in LOW_ORDER {
                assert_eq!(
                    diffie_hellman(backend, &[0x42; 32], &h(p)),
                    Err(LowOrderPoint),
                    "{backend:?} {p}"
                );
            }
        }
    }

    #[cfg(feature = "std")]
    #[test]
    fn static_static_results_are_kept_only_for_the_configured_peer() {
        use snow::types::Dh;
        let keys = Keypair::from_private(crate::PrivateKey::from_bytes([9; 32]));
        let host = public_key(&[5; 32]);
        let other = public_key(&[6; 32]);
        let expected = *diffie_hellman(Backend::Portable, &[9; 32], &host).unwrap();
        for round in 0..2 {
            let mut dh = NoiseDh::new(Backend::default(), keys.clone(), Some(host));
            dh.set(&[9; 32]);
            let mut out = [0u8; 32];
            dh.dh(&host, &mut out).unwrap();
            assert_eq!(out, expected, "round {round}");
            // Any other key (an ephemeral) is computed, not remembered.
            dh.dh(&other, &mut out).unwrap();
            assert_eq!(out, *diffie_hellman(Backend::Portable, &[9; 32], &other).unwrap());
            assert_eq!(keys.static_static().len(), 1);
        }
        // An ephemeral key object never uses the cache, even toward the configured peer.
        let mut e = NoiseDh::new(Backend::default(), keys.clone(), Some(host));
        e.set(&[3; 32]);
        let mut out = [0u8; 32];
        e.dh(&host, &mut out).unwrap();
        assert_eq!(out, *diffie_hellman(Backend::Portable, &[3; 32], &host).unwrap());
        // A handshake toward a peer whose entry was dropped is simply computed again.
        keys.static_static().clear();
        assert_eq!(keys.static_static().len(), 0);
        let mut dh = NoiseDh::new(Backend::default(), keys.clone(), Some(host));
        dh.set(&[9; 32]);
        dh.dh(&host, &mut out).unwrap();
        assert_eq!(out, expected);
        assert_eq!(keys.static_static().len(), 1);
    }

    #[cfg(feature = "std")]
    #[test]
    fn the_static_static_cache_is_a_bounded_lru() {
        let cache = StaticStaticCache::with_capacity(3);
        let computed = core::cell::Cell::new(0);
        let get = |peer: u8| {
            let r = cache
                .get_or_compute(&[peer; 32], || {
                    computed.set(computed.get() + 1);
                    Ok(Zeroizing::new([peer ^ 0xff; 32]))
                })
                .unwrap();
            assert_eq!(*r, [peer ^ 0xff; 32], "peer {peer}");
        };
        for peer in [1, 2, 3] {
            get(peer);
        }
        assert_eq!((computed.get(), cache.len()), (3, 3));
        // Peer 1 reconnects (a hit), then a fourth peer arrives: the least recently used (2)
        // goes, not the oldest inserted (1, as a FIFO would).
        get(1);
        assert_eq!(computed.get(), 3, "a hit computes nothing");
        get(4);
        assert_eq!(cache.len(), 3, "bounded");
        assert!(cache.contains(&[1; 32]) && !cache.contains(&[2; 32]));
        assert!(cache.contains(&[3; 32]) && cache.contains(&[4; 32]));
        get(2);
        assert_eq!(computed.get(), 5, "an evicted peer is computed again");
        assert!(!cache.contains(&[3; 32]), "3 was the least recently used");
        // A failure is not remembered; a zero capacity keeps nothing.
        assert_eq!(cache.get_or_compute(&[9; 32], || Err(LowOrderPoint)), Err(LowOrderPoint));
        assert!(!cache.contains(&[9; 32]));
        let none = StaticStaticCache::with_capacity(0);
        assert_eq!(*none.get_or_compute(&[1; 32], || Ok(Zeroizing::new([7; 32]))).unwrap(), [7; 32]);
        assert_eq!(none.len(), 0);
        // Many peers: never above the bound, and the order index stays in step with the map.
        let big = StaticStaticCache::with_capacity(64);
        for i in 0..1000u32 {
            let mut peer = [0u8; 32];
            peer[..4].copy_from_slice(&i.to_be_bytes());
            let _ = big.get_or_compute(&peer, || Ok(Zeroizing::new([1; 32])));
            let _ = big.get_or_compute(&[0; 32], || Ok(Zeroizing::new([2; 32])));
            let lru = big.lock();
            assert!(lru.entries.len() <= 64 && lru.entries.len() == lru.by_use.len());
        }
        assert!(big.contains(&[0; 32]), "the peer used all along stays");
    }

    #[test]
    fn the_known_static_key_is_reused_not_recomputed() {
        use snow::types::Dh;
        let keys = Keypair::from_private(crate::PrivateKey::from_bytes([9; 32]));
        let mut dh = NoiseDh::new(Backend::default(), keys.clone(), None);
        dh.set(&[9; 32]);
        assert_eq!(dh.pubkey(), keys.public().as_bytes());
        // Another key on the same object is derived, not confused with the known one.
        dh.set(&[8; 32]);
        assert_eq!(dh.pubkey(), &public_key(&[8; 32]));
    }

    proptest! {
        #[test]
        fn backends_agree_on_any_input(private in any::<[u8; 32]>(), public in any::<[u8; 32]>()) {
            let results: alloc::vec::Vec<_> =
                backends().into_iter().map(|b| diffie_hellman(b, &private, &public).map(|s| *s)).collect();
            prop_assert!(results.windows(2).all(|w| w[0] == w[1]), "{:?}", results);
            let publics: alloc::vec::Vec<_> = backends().into_iter().map(|b| Secret::new(b, &private).1).collect();
            prop_assert!(publics.windows(2).all(|w| w[0] == w[1]));
        }
    }
}
