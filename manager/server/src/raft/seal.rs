//! Sealing the Raft store's records: the pure core of encryption at rest.
//!
//! Every record the store writes with state-machine content (a log entry's
//! JSON, a snapshot's metadata and data) is sealed with the manager's
//! 256-bit storage key by AES-256-GCM (`ring::aead`), with a random 96-bit
//! nonce per record and associated data that names the record's place (a
//! log entry's index, the snapshot's metadata, the data of snapshot `id`),
//! so that a record moved to another place, altered, or sealed with another
//! key does not open. A sealed record is a versioned envelope:
//!
//! ```text
//! 00 'M' 'S' 'R' | version (1) | nonce (12 bytes) | ciphertext | tag (16 bytes)
//! ```
//!
//! Records written before the store was sealed ("legacy", plain JSON,
//! which never starts with a zero byte) stay readable, but only where the
//! store's [`Sealing`] record says they may be: log entries below
//! [`Sealing::sealed_from`], and the one snapshot that was stored when the
//! store was first sealed (by its SHA-256). Anything else unsealed is
//! refused, so unsealed records cannot be slipped in later.
//!
//! No file I/O here: bytes in, bytes out (the nonces come from the system's
//! random source). The key file and the database are the shell's
//! ([`super::storage_key`]).

use std::borrow::Cow;
use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// The storage key's length in bytes (AES-256).
pub const KEY_LEN: usize = 32;

/// The first bytes of a sealed record. JSON never starts with a zero byte,
/// so a legacy record is never taken for a sealed one.
const MAGIC: [u8; 4] = [0x00, b'M', b'S', b'R'];
/// The envelope's only version so far: AES-256-GCM, the nonce, the
/// ciphertext and its tag. A later cipher or key rotation takes another.
const VERSION_1: u8 = 1;
const HEADER_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;
const TAG_LEN: usize = 16;

/// A manager's storage key: 32 secret bytes. Its `Debug` does not show them.
#[derive(Clone, PartialEq, Eq)]
pub struct StorageKey([u8; KEY_LEN]);

impl StorageKey {
    /// The key made of `bytes`.
    #[must_use]
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A new random key from the system's random source.
    ///
    /// # Errors
    /// [`SealError::Random`] when the random source fails.
    pub fn generate() -> Result<Self, SealError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealError::Random)?;
        Ok(Self(bytes))
    }

    /// The key's bytes, to write them to the key file.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKey(..)")
    }
}

/// Where a record lives in the store: bound to the record by the associated
/// data, so a record only opens where it was sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place<'a> {
    /// The log entry at this index.
    LogEntry(u64),
    /// The stored snapshot's metadata.
    SnapshotMeta,
    /// The data of the snapshot with this ID.
    SnapshotData(&'a str),
    /// The store's [`Sealing`] record.
    Sealing,
}

impl Place<'_> {
    /// The associated data: the envelope's version and the place.
    fn aad(&self, version: u8) -> Vec<u8> {
        let mut aad = vec![version];
        match self {
            Place::LogEntry(index) => {
                aad.extend_from_slice(b"mesh-raft/log/");
                aad.extend_from_slice(&index.to_be_bytes());
            }
            Place::SnapshotMeta => aad.extend_from_slice(b"mesh-raft/snapshot-meta"),
            Place::SnapshotData(id) => {
                aad.extend_from_slice(b"mesh-raft/snapshot-data/");
                aad.extend_from_slice(id.as_bytes());
            }
            Place::Sealing => aad.extend_from_slice(b"mesh-raft/sealing"),
        }
        aad
    }
}

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::LogEntry(index) => write!(f, "log entry {index}"),
            Place::SnapshotMeta => f.write_str("the snapshot's metadata"),
            Place::SnapshotData(id) => write!(f, "the data of snapshot {id}"),
            Place::Sealing => f.write_str("the store's sealing record"),
        }
    }
}

/// Why a record could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Authentication failed: the record was altered, belongs to another
    /// place, or was sealed with another key (AES-GCM cannot tell which).
    #[error(
        "{0} does not open with the storage key: it was altered, moved, or sealed with another key"
    )]
    Unopenable(String),
    /// A sealed record too short to hold its header and tag.
    #[error("{0} is a truncated sealed record")]
    Truncated(String),
    /// A sealed record of an envelope version this manager does not know
    /// (written by a newer one).
    #[error("{place} is sealed with envelope version {version}, unknown to this manager")]
    UnknownVersion {
        /// The record.
        place: String,
        /// Its version byte.
        version: u8,
    },
    /// An unsealed record where the store holds only sealed ones.
    #[error(
        "{0} is not sealed, but the store was sealed before it was written: it was put there by something else"
    )]
    Unsealed(String),
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
    /// The sealing record is not what this manager writes.
    #[error("the store's sealing record is corrupt: {0}")]
    BadSealing(String),
}

/// A record as read from the store.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'r> {
    /// It was sealed; here is its plaintext.
    Sealed(Vec<u8>),
    /// It was written before the store was sealed, as it is.
    Legacy(&'r [u8]),
}

impl<'r> Opened<'r> {
    /// The record's plaintext, however it was stored.
    #[must_use]
    pub fn into_plaintext(self) -> Cow<'r, [u8]> {
        match self {
            Opened::Sealed(v) => Cow::Owned(v),
            Opened::Legacy(v) => Cow::Borrowed(v),
        }
    }
}

/// Whether `record` is a sealed envelope (of any version).
#[must_use]
pub fn is_sealed(record: &[u8]) -> bool {
    record.starts_with(&MAGIC)
}

/// AES-256-GCM under one storage key.
pub struct Cipher {
    key: LessSafeKey,
    random: SystemRandom,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher(AES-256-GCM)")
    }
}

impl Cipher {
    /// The cipher of `key`.
    #[must_use]
    pub fn new(key: &StorageKey) -> Self {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("a 32-byte AES-256-GCM key");
        Self {
            key: LessSafeKey::new(unbound),
            random: SystemRandom::new(),
        }
    }

    /// Seals `plaintext` for `place` with a fresh random nonce.
    ///
    /// # Errors
    /// [`SealError::Random`] when the random source fails.
    pub fn seal(&self, place: Place<'_>, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        Ok(self.seal_with_nonce(place, plaintext, nonce))
    }

    fn seal_with_nonce(
        &self,
        place: Place<'_>,
        plaintext: &[u8],
        nonce: [u8; NONCE_LEN],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION_1);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.aad(VERSION_1)),
                &mut body,
            )
            .expect("AES-GCM seals any record this small");
        out.extend_from_slice(&body);
        out
    }

    /// Opens `record` read from `place`: a sealed record is authenticated
    /// and decrypted; any other is returned as it is ([`Opened::Legacy`]).
    ///
    /// # Errors
    /// [`SealError`] when a sealed record does not open (altered, moved,
    /// another key), is truncated, or has an unknown version.
    pub fn open<'r>(&self, place: Place<'_>, record: &'r [u8]) -> Result<Opened<'r>, SealError> {
        if !is_sealed(record) {
            return Ok(Opened::Legacy(record));
        }
        let Some(&version) = record.get(MAGIC.len()) else {
            return Err(SealError::Truncated(place.to_string()));
        };
        if version != VERSION_1 {
            return Err(SealError::UnknownVersion {
                place: place.to_string(),
                version,
            });
        }
        if record.len() < HEADER_LEN + TAG_LEN {
            return Err(SealError::Truncated(place.to_string()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&record[MAGIC.len() + 1..HEADER_LEN]);
        let mut body = record[HEADER_LEN..].to_vec();
        let len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(place.aad(version)),
                &mut body,
            )
            .map_err(|_| SealError::Unopenable(place.to_string()))?
            .len();
        body.truncate(len);
        Ok(Opened::Sealed(body))
    }
}

/// What the store says about its own sealing, itself stored sealed (so it
/// cannot be forged without the key): which unsealed records, written
/// before the store was sealed, may still be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealing {
    /// Log entries below this index may be unsealed (they were written
    /// before); from it on, every entry must be sealed. 0 for a store
    /// sealed from its start.
    pub sealed_from: u64,
    /// The SHA-256 (hex) of the unsealed snapshot stored when the store was
    /// first sealed ([`snapshot_digest`]), if there was one: that snapshot,
    /// and no other unsealed one, may be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_snapshot: Option<String>,
}

impl Sealing {
    /// A store sealed from its first record.
    #[must_use]
    pub fn from_start() -> Self {
        Self {
            sealed_from: 0,
            legacy_snapshot: None,
        }
    }

    /// Whether the store held unsealed records when it was first sealed.
    #[must_use]
    pub fn has_legacy(&self) -> bool {
        self.sealed_from > 0 || self.legacy_snapshot.is_some()
    }
}

/// The digest that identifies an unsealed snapshot (its metadata and data
/// records as stored), for [`Sealing::legacy_snapshot`].
#[must_use]
pub fn snapshot_digest(meta: &[u8], data: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&u64::try_from(meta.len()).unwrap_or(u64::MAX).to_be_bytes());
    ctx.update(meta);
    ctx.update(data);
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A stored snapshot's records, opened.
#[derive(Debug)]
pub struct OpenedSnapshot<'r> {
    /// The metadata's plaintext (JSON).
    pub meta: Cow<'r, [u8]>,
    /// The data's plaintext (the state as JSON).
    pub data: Cow<'r, [u8]>,
}

/// The store's records sealed and opened under its key and its
/// [`Sealing`]: what the log store and the state machine use.
#[derive(Debug)]
pub struct StoreSeal {
    cipher: Cipher,
    sealing: Sealing,
}

impl StoreSeal {
    /// Seals and opens with `key`, accepting the unsealed records `sealing` allows.
    #[must_use]
    pub fn new(key: &StorageKey, sealing: Sealing) -> Self {
        Self {
            cipher: Cipher::new(key),
            sealing,
        }
    }

    /// Opens a stored sealing record with `key`.
    ///
    /// # Errors
    /// [`SealError::Unopenable`] when `key` is not the store's key (or the
    /// record was altered), [`SealError::Unsealed`] when the record is not
    /// sealed, [`SealError::BadSealing`] when it is not a sealing record.
    pub fn from_record(key: &StorageKey, record: &[u8]) -> Result<Self, SealError> {
        let cipher = Cipher::new(key);
        let plaintext = match cipher.open(Place::Sealing, record)? {
            Opened::Sealed(p) => p,
            Opened::Legacy(_) => return Err(SealError::Unsealed(Place::Sealing.to_string())),
        };
        let sealing =
            serde_json::from_slice(&plaintext).map_err(|e| SealError::BadSealing(e.to_string()))?;
        Ok(Self { cipher, sealing })
    }

    /// The sealing record to store, sealed.
    ///
    /// # Errors
    /// [`SealError::Random`] when the random source fails.
    pub fn sealing_record(&self) -> Result<Vec<u8>, SealError> {
        let json = serde_json::to_vec(&self.sealing).expect("the sealing record serialises");
        self.cipher.seal(Place::Sealing, &json)
    }

    /// What the store allows of unsealed records.
    #[must_use]
    pub fn sealing(&self) -> &Sealing {
        &self.sealing
    }

    /// Seals the log entry at `index`.
    ///
    /// # Errors
    /// [`SealError::Random`] when the random source fails.
    pub fn seal_entry(&self, index: u64, json: &[u8]) -> Result<Vec<u8>, SealError> {
        self.cipher.seal(Place::LogEntry(index), json)
    }

    /// Opens the log entry stored at `index`.
    ///
    /// # Errors
    /// [`SealError`] when it does not open, or is unsealed at or above
    /// [`Sealing::sealed_from`].
    pub fn open_entry<'r>(&self, index: u64, record: &'r [u8]) -> Result<Cow<'r, [u8]>, SealError> {
        let place = Place::LogEntry(index);
        match self.cipher.open(place, record)? {
            Opened::Legacy(_) if index >= self.sealing.sealed_from => {
                Err(SealError::Unsealed(place.to_string()))
            }
            opened => Ok(opened.into_plaintext()),
        }
    }

    /// Seals a snapshot: its metadata, and its data bound to its ID.
    ///
    /// # Errors
    /// [`SealError::Random`] when the random source fails.
    pub fn seal_snapshot(
        &self,
        id: &str,
        meta: &[u8],
        data: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), SealError> {
        Ok((
            self.cipher.seal(Place::SnapshotMeta, meta)?,
            self.cipher.seal(Place::SnapshotData(id), data)?,
        ))
    }

    /// Opens a stored snapshot's metadata record; `id` reads the snapshot's
    /// ID from the metadata's plaintext, to open its data.
    ///
    /// # Errors
    /// [`SealError`] when either record does not open, when they are not
    /// both sealed or both unsealed, or when they are unsealed and not the
    /// snapshot the store held when it was first sealed; `id`'s own error
    /// as it is.
    pub fn open_snapshot<'r, E: From<SealError>>(
        &self,
        meta: &'r [u8],
        data: &'r [u8],
        id: impl FnOnce(&[u8]) -> Result<String, E>,
    ) -> Result<OpenedSnapshot<'r>, E> {
        match self.cipher.open(Place::SnapshotMeta, meta)? {
            Opened::Sealed(meta_plain) => {
                let snapshot_id = id(&meta_plain)?;
                let place = Place::SnapshotData(&snapshot_id);
                match self.cipher.open(place, data)? {
                    Opened::Sealed(data_plain) => Ok(OpenedSnapshot {
                        meta: Cow::Owned(meta_plain),
                        data: Cow::Owned(data_plain),
                    }),
                    Opened::Legacy(_) => Err(SealError::Unsealed(place.to_string()).into()),
                }
            }
            Opened::Legacy(_) => {
                let allowed = self.sealing.legacy_snapshot.as_deref()
                    == Some(snapshot_digest(meta, data).as_str());
                if allowed && !is_sealed(data) {
                    Ok(OpenedSnapshot {
                        meta: Cow::Borrowed(meta),
                        data: Cow::Borrowed(data),
                    })
                } else {
                    Err(SealError::Unsealed("the stored snapshot".to_string()).into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> StorageKey {
        StorageKey::from_bytes([b; KEY_LEN])
    }

    const ENTRY: &[u8] = br#"{"log_id":{"index":7},"payload":{"Normal":"marker-1234"}}"#;

    #[test]
    fn a_sealed_record_opens_to_its_plaintext_and_hides_it() {
        let cipher = Cipher::new(&key(1));
        let sealed = cipher.seal(Place::LogEntry(7), ENTRY).unwrap();
        assert!(is_sealed(&sealed));
        assert_eq!(sealed.len(), HEADER_LEN + ENTRY.len() + TAG_LEN);
        assert!(
            !sealed.windows(6).any(|w| w == b"marker"),
            "the plaintext shows through"
        );
        assert_eq!(
            cipher.open(Place::LogEntry(7), &sealed).unwrap(),
            Opened::Sealed(ENTRY.to_vec())
        );
        // Two seals of the same record differ (fresh nonces).
        assert_ne!(sealed, cipher.seal(Place::LogEntry(7), ENTRY).unwrap());
    }

    #[test]
    fn an_empty_record_round_trips() {
        let cipher = Cipher::new(&key(1));
        let sealed = cipher.seal(Place::SnapshotMeta, b"").unwrap();
        assert_eq!(
            cipher.open(Place::SnapshotMeta, &sealed).unwrap(),
            Opened::Sealed(Vec::new())
        );
    }

    #[test]
    fn a_tampered_record_does_not_open() {
        let cipher = Cipher::new(&key(1));
        let sealed = cipher.seal(Place::LogEntry(7), ENTRY).unwrap();
        // Every byte after the magic matters: version, nonce, body, tag.
        for i in MAGIC.len()..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                cipher.open(Place::LogEntry(7), &bad).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
        let err = {
            let mut bad = sealed.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x80;
            cipher.open(Place::LogEntry(7), &bad).unwrap_err()
        };
        assert_eq!(
            err.to_string(),
            "log entry 7 does not open with the storage key: it was altered, moved, or sealed with another key"
        );
        let truncated = &sealed[..HEADER_LEN + TAG_LEN - 1];
        assert!(matches!(
            cipher.open(Place::LogEntry(7), truncated),
            Err(SealError::Truncated(_))
        ));
    }

    #[test]
    fn another_key_does_not_open_a_record() {
        let sealed = Cipher::new(&key(1))
            .seal(Place::LogEntry(7), ENTRY)
            .unwrap();
        assert!(matches!(
            Cipher::new(&key(2)).open(Place::LogEntry(7), &sealed),
            Err(SealError::Unopenable(_))
        ));
    }

    #[test]
    fn a_record_does_not_open_in_another_place() {
        let cipher = Cipher::new(&key(1));
        let entry = cipher.seal(Place::LogEntry(7), ENTRY).unwrap();
        for other in [
            Place::LogEntry(8),
            Place::LogEntry(7 << 32),
            Place::SnapshotMeta,
            Place::SnapshotData("7"),
            Place::Sealing,
        ] {
            assert!(
                matches!(cipher.open(other, &entry), Err(SealError::Unopenable(_))),
                "a log entry opened as {other}"
            );
        }
        let data = cipher.seal(Place::SnapshotData("1-7-0"), ENTRY).unwrap();
        assert!(cipher.open(Place::SnapshotData("1-7-1"), &data).is_err());
        assert!(cipher.open(Place::SnapshotData("1-7-0"), &data).is_ok());
    }

    #[test]
    fn an_unknown_version_is_refused_by_name() {
        let cipher = Cipher::new(&key(1));
        let mut sealed = cipher.seal(Place::LogEntry(7), ENTRY).unwrap();
        sealed[MAGIC.len()] = 2;
        let err = cipher.open(Place::LogEntry(7), &sealed).unwrap_err();
        assert!(
            matches!(err, SealError::UnknownVersion { version: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_legacy_record_passes_through() {
        let cipher = Cipher::new(&key(1));
        assert_eq!(
            cipher.open(Place::LogEntry(7), ENTRY).unwrap(),
            Opened::Legacy(ENTRY)
        );
        assert!(!is_sealed(ENTRY));
        assert!(!is_sealed(b""));
    }

    #[test]
    fn a_fixed_nonce_gives_a_fixed_envelope() {
        let cipher = Cipher::new(&key(1));
        let a = cipher.seal_with_nonce(Place::Sealing, b"x", [9; NONCE_LEN]);
        let b = cipher.seal_with_nonce(Place::Sealing, b"x", [9; NONCE_LEN]);
        assert_eq!(a, b);
        assert_eq!(&a[..MAGIC.len() + 1], &[0, b'M', b'S', b'R', 1]);
        assert_eq!(&a[MAGIC.len() + 1..HEADER_LEN], &[9; NONCE_LEN]);
    }

    #[test]
    fn legacy_entries_open_only_below_the_sealing_point() {
        let store = StoreSeal::new(
            &key(1),
            Sealing {
                sealed_from: 10,
                legacy_snapshot: None,
            },
        );
        assert_eq!(&*store.open_entry(9, ENTRY).unwrap(), ENTRY);
        assert!(matches!(
            store.open_entry(10, ENTRY),
            Err(SealError::Unsealed(_))
        ));
        let sealed = store.seal_entry(10, ENTRY).unwrap();
        assert_eq!(&*store.open_entry(10, &sealed).unwrap(), ENTRY);
        // A sealed entry opens below the sealing point too (rewritten).
        let sealed = store.seal_entry(3, ENTRY).unwrap();
        assert_eq!(&*store.open_entry(3, &sealed).unwrap(), ENTRY);
        assert!(store.open_entry(4, &sealed).is_err());
    }

    fn snapshot_id(meta: &[u8]) -> Result<String, SealError> {
        Ok(String::from_utf8(meta.to_vec()).unwrap())
    }

    #[test]
    fn a_snapshot_round_trips_and_its_parts_stay_together() {
        let store = StoreSeal::new(&key(1), Sealing::from_start());
        let (meta, data) = store.seal_snapshot("s1", b"s1", b"state").unwrap();
        let opened = store.open_snapshot(&meta, &data, snapshot_id).unwrap();
        assert_eq!((&*opened.meta, &*opened.data), (&b"s1"[..], &b"state"[..]));
        // The data of another snapshot does not open under this metadata.
        let (meta2, data2) = store.seal_snapshot("s2", b"s2", b"older").unwrap();
        assert!(store.open_snapshot(&meta, &data2, snapshot_id).is_err());
        assert!(store.open_snapshot(&meta2, &data, snapshot_id).is_err());
        // Sealed metadata with unsealed data is refused.
        assert!(matches!(
            store.open_snapshot(&meta, b"state", snapshot_id),
            Err(SealError::Unsealed(_))
        ));
    }

    #[test]
    fn only_the_snapshot_stored_before_sealing_may_be_unsealed() {
        let legacy = StoreSeal::new(
            &key(1),
            Sealing {
                sealed_from: 5,
                legacy_snapshot: Some(snapshot_digest(b"meta", b"state")),
            },
        );
        let opened = legacy
            .open_snapshot(b"meta", b"state", snapshot_id)
            .unwrap();
        assert_eq!(
            (&*opened.meta, &*opened.data),
            (&b"meta"[..], &b"state"[..])
        );
        assert!(
            legacy
                .open_snapshot(b"meta", b"other", snapshot_id)
                .is_err()
        );
        let sealed_from_start = StoreSeal::new(&key(1), Sealing::from_start());
        assert!(matches!(
            sealed_from_start.open_snapshot(b"meta", b"state", snapshot_id),
            Err(SealError::Unsealed(_))
        ));
    }

    #[test]
    fn the_sealing_record_opens_only_with_its_key() {
        let sealing = Sealing {
            sealed_from: 42,
            legacy_snapshot: Some(snapshot_digest(b"m", b"d")),
        };
        let store = StoreSeal::new(&key(1), sealing.clone());
        let record = store.sealing_record().unwrap();
        assert_eq!(
            StoreSeal::from_record(&key(1), &record).unwrap().sealing(),
            &sealing
        );
        assert!(matches!(
            StoreSeal::from_record(&key(2), &record),
            Err(SealError::Unopenable(_))
        ));
        assert!(matches!(
            StoreSeal::from_record(&key(1), br#"{"sealed_from":0}"#),
            Err(SealError::Unsealed(_))
        ));
    }

    #[test]
    fn a_key_does_not_show_in_debug_output() {
        assert_eq!(format!("{:?}", key(0xab)), "StorageKey(..)");
    }
}
