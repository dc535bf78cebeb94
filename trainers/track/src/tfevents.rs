//! TensorBoard event files: TFRecord framing around `tensorflow.Event` protobuf messages.
//!
//! # The format (written here, read by TensorBoard)
//!
//! An event file is a sequence of records; each record is
//!
//! ```text
//! u64 length (little endian) | u32 masked_crc32c(length bytes) | data | u32 masked_crc32c(data)
//! ```
//!
//! where `masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping) over the
//! CRC32C (Castagnoli) of `x`, and `data` is one encoded `tensorflow.Event`:
//!
//! ```text
//! message Event {
//!   double wall_time = 1;            // seconds since the epoch, of the write
//!   int64 step = 2;                  // the training step the values belong to
//!   oneof what {
//!     string file_version = 3;       // first record of every file: "brain.Event:2"
//!     Summary summary = 5;           // scalars
//!     SessionLog session_log = 6;    // START: the run restarted (resume) at `step`
//!   }
//! }
//! message Summary { repeated Value value = 1; }
//! message Value { string tag = 1; oneof value { float simple_value = 2; } }
//! message SessionLog { enum Status { STATUS_UNSPECIFIED = 0; START = 1; } Status status = 1; }
//! ```
//!
//! Only the fields above are declared ([`Event`], [`Summary`], [`Value`],
//! [`SessionLog`], with prost's derive); `simple_value` is an `optional` field so that a
//! value of `0.0` is still written (it is a member of a oneof in TensorFlow's schema:
//! absent would mean "no value").
//!
//! # Crash safety
//!
//! Each record is encoded whole into memory and handed to the kernel with one
//! `write_all` on the unbuffered file, so after every [`EventWriter`] call the file ends
//! on a record boundary, and a process killed during a write leaves at most a prefix of
//! its last record. TensorBoard's reader stops at such a truncated tail (the length, or
//! the data, is shorter than announced) and reads everything before it; [`read_records`]
//! does the same and says so. Nothing is fsynced: the file is a log, and a power loss
//! costs at most its tail, which reads the same way.
//!
//! # Files
//!
//! [`EventWriter::create`] opens a new file in the directory, named the way TensorFlow
//! and tensorboardX name theirs, `events.out.tfevents.<unix seconds>.<host>.<pid>.<n>`;
//! the seconds are made later than those of every event file already there, so a resumed
//! run's file sorts (and so loads) after the first one, and TensorBoard applies its
//! `SessionLog START` ([`EventWriter::restart`]): the values of steps at or after the
//! restart step in earlier files are dropped, as they were in `metrics.jsonl`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::TrackError;

/// The `file_version` of the first record: TensorBoard reads version 2 files
/// (restarts are `SessionLog START` events, not out-of-order steps).
pub const FILE_VERSION: &str = "brain.Event:2";

/// The prefix of every event file name (TensorBoard finds files by `tfevents`).
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// `tensorflow.Event` (the fields ausa writes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch when the event was written.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The training step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// `brain.Event:2` in the first record of a file.
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    /// Scalars.
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
    /// A restart marker.
    #[prost(message, optional, tag = "6")]
    pub session_log: Option<SessionLog>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value` with a `simple_value` (a scalar).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The tag, e.g. `train/loss`.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The scalar (`float`: TensorBoard's scalars are 32-bit).
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// `tensorflow.SessionLog`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// [`SessionLog::START`] and so on.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

impl SessionLog {
    /// `SessionLog.Status.START`.
    pub const START: i32 = 1;
}

/// `masked_crc32c`: TFRecord's masked CRC32C of `bytes`.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its masked CRC, the data, its masked CRC.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The records of an event file's bytes, as TensorBoard reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct Records {
    /// Every whole record's data, in order.
    pub records: Vec<Vec<u8>>,
    /// Bytes of a truncated last record (a writer killed mid-record), 0 if none.
    pub truncated_tail: usize,
}

/// Splits `bytes` into TFRecords, checking both checksums of every record. A truncated
/// tail is reported in [`Records::truncated_tail`]; a checksum mismatch is an error.
pub fn read_records(bytes: &[u8]) -> Result<Records, String> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 12 {
            return Ok(Records {
                records,
                truncated_tail: rest.len(),
            });
        }
        let (len_bytes, crc) = (&rest[..8], &rest[8..12]);
        if masked_crc32c(len_bytes).to_le_bytes() != crc {
            return Err(format!(
                "record at byte {at}: the length's checksum is wrong"
            ));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(16))
            .filter(|&end| end <= rest.len())
        else {
            return Ok(Records {
                records,
                truncated_tail: rest.len(),
            });
        };
        let data = &rest[12..end - 4];
        if masked_crc32c(data).to_le_bytes() != rest[end - 4..end] {
            return Err(format!("record at byte {at}: the data's checksum is wrong"));
        }
        records.push(data.to_vec());
        at += end;
    }
    Ok(Records {
        records,
        truncated_tail: 0,
    })
}

/// The events of an event file (for tests and tools; TensorBoard is the real reader).
pub fn read_events(path: &Path) -> Result<Vec<Event>, TrackError> {
    let bytes = std::fs::read(path).map_err(TrackError::io(path))?;
    let bad = |message: String| TrackError::BadFile {
        path: path.to_path_buf(),
        message,
    };
    read_records(&bytes)
        .map_err(bad)?
        .records
        .iter()
        .map(|r| Event::decode(r.as_slice()).map_err(|e| bad(e.to_string())))
        .collect()
}

/// Appends events to one new event file; every call ends with the file on a record
/// boundary (see the module docs).
#[derive(Debug)]
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

/// Distinguishes the files of one process.
static FILES: AtomicU64 = AtomicU64::new(0);

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The seconds in an event file name, if it is one.
fn file_seconds(name: &str) -> Option<u64> {
    name.strip_prefix(FILE_PREFIX)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

impl EventWriter {
    /// Creates `dir` if needed and a new event file in it, whose first record is the
    /// file version.
    pub fn create(dir: &Path) -> Result<EventWriter, TrackError> {
        std::fs::create_dir_all(dir).map_err(TrackError::io(dir))?;
        let mut seconds = now() as u64;
        for entry in std::fs::read_dir(dir).map_err(TrackError::io(dir))? {
            let entry = entry.map_err(TrackError::io(dir))?;
            if let Some(s) = file_seconds(&entry.file_name().to_string_lossy()) {
                seconds = seconds.max(s + 1);
            }
        }
        let host = gethostname::gethostname()
            .to_string_lossy()
            .replace(['/', '.'], "_");
        let name = format!(
            "{FILE_PREFIX}{seconds:010}.{host}.{}.{}",
            std::process::id(),
            FILES.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(TrackError::io(&path))?;
        let mut writer = EventWriter { file, path };
        writer.write(&Event {
            wall_time: now(),
            step: 0,
            file_version: Some(FILE_VERSION.into()),
            ..Event::default()
        })?;
        Ok(writer)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event (one record, one `write_all`).
    pub fn write(&mut self, event: &Event) -> Result<(), TrackError> {
        let record = frame(&event.encode_to_vec());
        self.file
            .write_all(&record)
            .map_err(TrackError::io(&self.path))
    }

    /// Writes the scalars of one step as one event (nothing for an empty list).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<(), TrackError> {
        if values.is_empty() {
            return Ok(());
        }
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            summary: Some(Summary {
                value: values
                    .iter()
                    .map(|(tag, v)| Value {
                        tag: tag.clone(),
                        simple_value: Some(*v as f32),
                    })
                    .collect(),
            }),
            ..Event::default()
        })
    }

    /// Writes the scalars of one `metrics.jsonl` line ([`crate::scalars::of_line`]);
    /// a line without scalars writes nothing.
    pub fn metrics_line(&mut self, line: &serde_json::Value) -> Result<(), TrackError> {
        match crate::scalars::of_line(line) {
            Some((step, values)) => self.scalars(step, &values),
            None => Ok(()),
        }
    }

    /// Marks a restart at `step` (a resumed run's first new step): TensorBoard drops
    /// what earlier files hold for steps `>= step`.
    pub fn restart(&mut self, step: u64) -> Result<(), TrackError> {
        self.write(&Event {
            wall_time: now(),
            step: step as i64,
            session_log: Some(SessionLog {
                status: SessionLog::START,
            }),
            ..Event::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_known_vectors() {
        // RFC 3720 (iSCSI) B.4 and the classic check value of "123456789".
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8a91_36aa);
        // TensorFlow's masking (rotate right by 15, add 0xa282ead8); the values are
        // those of TensorBoard's own `masked_crc32c`.
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(&[0u8; 8]), 0x0798_0329);
    }

    #[test]
    fn a_record_round_trips_and_its_checksums_are_checked() {
        let event = Event {
            wall_time: 1.5,
            step: 7,
            summary: Some(Summary {
                value: vec![
                    Value {
                        tag: "train/loss".into(),
                        simple_value: Some(2.25),
                    },
                    Value {
                        tag: "train/zero".into(),
                        simple_value: Some(0.0),
                    },
                ],
            }),
            ..Event::default()
        };
        let data = event.encode_to_vec();
        let mut bytes = frame(&data);
        assert_eq!(bytes.len(), data.len() + 16);
        assert_eq!(&bytes[..8], &(data.len() as u64).to_le_bytes());
        let back = read_records(&bytes).unwrap();
        assert_eq!(back.records, vec![data.clone()]);
        assert_eq!(back.truncated_tail, 0);
        let decoded = Event::decode(back.records[0].as_slice()).unwrap();
        assert_eq!(decoded, event);
        // A zero is written, not left out: TensorBoard would see no value at all.
        assert_eq!(decoded.summary.unwrap().value[1].simple_value, Some(0.0));
        // One flipped bit of the data fails its checksum.
        bytes[14] ^= 1;
        assert!(read_records(&bytes)
            .unwrap_err()
            .contains("data's checksum"));
    }

    #[test]
    fn a_truncated_last_record_leaves_the_earlier_ones_readable() {
        let mut bytes = frame(b"first");
        bytes.extend_from_slice(&frame(b"second"));
        let whole = bytes.len();
        for cut in [whole - 1, whole - 10, whole - 20] {
            let back = read_records(&bytes[..cut]).unwrap();
            assert_eq!(back.records, vec![b"first".to_vec()], "cut at {cut}");
            assert_eq!(back.truncated_tail, cut - 21);
        }
    }

    #[test]
    fn the_writer_starts_with_the_file_version_and_writes_steps_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with(FILE_PREFIX), "{name}");
        w.scalars(3, &[("train/loss".into(), 4.5), ("train/lr".into(), 1e-3)])
            .unwrap();
        w.scalars(4, &[]).unwrap();
        w.restart(4).unwrap();
        let events = read_events(w.path()).unwrap();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].file_version.as_deref(), Some(FILE_VERSION));
        assert_eq!(events[1].step, 3);
        let values = &events[1].summary.as_ref().unwrap().value;
        assert_eq!(values[0].tag, "train/loss");
        assert_eq!(values[0].simple_value, Some(4.5));
        assert_eq!(values[1].simple_value, Some(1e-3f64 as f32));
        assert_eq!(
            events[2].session_log.as_ref().unwrap().status,
            SessionLog::START
        );
        // A second file in the same directory sorts after the first.
        let w2 = EventWriter::create(dir.path()).unwrap();
        assert!(w2.path() > w.path(), "{:?} {:?}", w2.path(), w.path());
    }
}
