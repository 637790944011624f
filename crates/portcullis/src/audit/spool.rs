//! The spool: where the audit log's batches go while its store is unreachable or refuses
//! them, `audit.spool` in the data directory, to be replayed into the store, in order, when
//! it takes writes again. Append-only; each batch is one record (a magic number, its
//! length, a checksum and the batch as JSON; several, in order, for a batch larger than a
//! record may be), fsync'd before the batch counts as written.
//! A record whose checksum does not match, or that is cut short, is reported and skipped:
//! the reader finds the next record by its magic number.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::chain::Checkpoint;
use super::store::StoredEvent;

/// The spool's file in the data directory.
pub const SPOOL_FILE: &str = "audit.spool";

/// What every record starts with.
const MAGIC: [u8; 4] = *b"PCSP";
/// The checksum's length: the first bytes of the body's SHA-256.
const CHECKSUM: usize = 8;
/// A record longer than this is taken for a corrupted length.
const MAX_RECORD: u32 = 256 * 1024 * 1024;

/// One batch, as spooled: the events and the checkpoint one transaction would have stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpooledBatch {
    /// The events, in chain order.
    pub events: Vec<StoredEvent>,
    /// The checkpoint stored with them, if any.
    pub checkpoint: Option<Checkpoint>,
}

/// What reading the next record found.
#[derive(Debug)]
pub enum Record {
    /// A whole batch, and the offset just past it.
    Batch(SpooledBatch, u64),
    /// A record that is corrupted or cut short.
    Corrupt {
        /// Where it starts, as reported (the `spool_loss` event's `spool_offset`).
        at: u64,
        /// Where reading goes on: the next record's magic number, or the end.
        next: u64,
    },
}

/// The spool file, appended to while the store is down, and how much of it is replayed.
#[derive(Debug)]
pub struct Spool {
    path: PathBuf,
    /// The file's length.
    len: u64,
    /// How much of it has been replayed into the store.
    replayed: u64,
}

impl Spool {
    /// The spool in `dir`, as the last process left it (nothing of it replayed yet).
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(SPOOL_FILE);
        // Only a file holds batches (a directory in its place only refuses them).
        let len = std::fs::metadata(&path)
            .ok()
            .filter(std::fs::Metadata::is_file)
            .map_or(0, |meta| meta.len());
        Self {
            path,
            len,
            replayed: 0,
        }
    }

    /// Whether every batch spooled has been replayed.
    pub fn is_drained(&self) -> bool {
        self.replayed >= self.len
    }

    /// Appends `batch` and syncs it to disk: as one record, or as several in order when it
    /// is larger than a record may be, all written and synced at once.
    pub fn append(&mut self, batch: &SpooledBatch) -> io::Result<()> {
        let mut record = Vec::new();
        encode_records(batch, MAX_RECORD, &mut record)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        // With PostgreSQL the data directory may not exist yet; private, as with SQLite.
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let created = !self.path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        let before = file.metadata()?.len();
        let written = file.write_all(&record).and_then(|()| file.sync_data());
        if let Err(error) = written {
            // No fragment left behind to read as a corrupted record later.
            let _ = file.set_len(before);
            return Err(error);
        }
        if created {
            // The file's name must survive a power cut as well as its bytes.
            File::open(dir)?.sync_all()?;
        }
        self.len = before + record.len() as u64;
        Ok(())
    }

    /// The records not yet replayed, in order.
    pub fn unreplayed(&self) -> io::Result<Reader> {
        Reader::open(&self.path, self.replayed)
    }

    /// How much of the spool has been replayed.
    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// Marks everything before `offset` replayed.
    pub fn replayed_to(&mut self, offset: u64) {
        self.replayed = offset;
    }

    /// Empties the spool once every batch in it is stored.
    pub fn clear(&mut self) -> io::Result<()> {
        if self.len > 0 {
            let file = OpenOptions::new().write(true).open(&self.path)?;
            file.set_len(0)?;
            file.sync_all()?;
        }
        self.len = 0;
        self.replayed = 0;
        Ok(())
    }
}

/// Reads a spool's records from an offset.
#[derive(Debug)]
pub struct Reader {
    /// The spool; none when there is none.
    input: Option<BufReader<File>>,
    offset: u64,
    /// The file's length when opened.
    len: u64,
    /// Whether the last read found the end.
    ended: bool,
}

impl Reader {
    /// The records of the spool at `path` from `offset`; none when there is no spool.
    pub fn open(path: &Path, offset: u64) -> io::Result<Self> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(Self {
                    input: None,
                    offset,
                    len: 0,
                    ended: true,
                });
            }
            Err(error) => return Err(error),
        };
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(offset))?;
        Ok(Self {
            input: Some(BufReader::new(file)),
            offset,
            len,
            ended: false,
        })
    }

    /// Whether every record has been read.
    pub fn at_end(&self) -> bool {
        self.ended || self.offset >= self.len
    }

    /// The next record, or `None` at the end.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let Some(input) = &mut self.input else {
            return Ok(None);
        };
        let mut header = [0u8; 4 + 4 + CHECKSUM];
        let got = read_up_to(input, &mut header)?;
        if got == 0 {
            self.ended = true;
            return Ok(None);
        }
        let start = self.offset;
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        // A corrupted length is not allowed to claim more than the file holds.
        let room = self.len.saturating_sub(start + header.len() as u64);
        let whole_header = got == header.len()
            && header[..4] == MAGIC
            && len <= MAX_RECORD
            && u64::from(len) <= room;
        if whole_header {
            let mut body = vec![0u8; len as usize];
            let body_got = read_up_to(input, &mut body)?;
            if body_got == body.len()
                && checksum(&body)[..] == header[8..]
                && let Ok(batch) = serde_json::from_slice::<SpooledBatch>(&body)
            {
                self.offset = start + (header.len() + body.len()) as u64;
                return Ok(Some(Record::Batch(batch, self.offset)));
            }
        }
        // Corrupted: look for the next record's magic number after this one's start.
        self.resync(start + 1)?;
        Ok(Some(Record::Corrupt {
            at: start,
            next: self.offset,
        }))
    }

    /// Moves to the first magic number at or after `from`, or to the end, reading a chunk
    /// at a time.
    fn resync(&mut self, from: u64) -> io::Result<()> {
        let Some(input) = &self.input else {
            return Ok(());
        };
        // A fresh handle: the buffered reader's position is past what it read ahead.
        let mut file = input.get_ref().try_clone()?;
        file.seek(SeekFrom::Start(from))?;
        let mut chunk = vec![0u8; 64 * 1024];
        // The bytes of the last chunk a magic number may continue from.
        let mut carry: Vec<u8> = Vec::new();
        let mut position = from;
        self.offset = self.len.max(from);
        loop {
            let got = read_up_to(&mut file, &mut chunk)?;
            if got == 0 {
                break;
            }
            let mut window = std::mem::take(&mut carry);
            let window_start = position - window.len() as u64;
            window.extend_from_slice(&chunk[..got]);
            if let Some(at) = window.windows(MAGIC.len()).position(|w| w == MAGIC) {
                self.offset = window_start + at as u64;
                break;
            }
            position += got as u64;
            carry = window[window.len().saturating_sub(MAGIC.len() - 1)..].to_vec();
        }
        file.seek(SeekFrom::Start(self.offset))?;
        self.input = Some(BufReader::new(file));
        Ok(())
    }
}

/// Appends `batch` to `out` as records of at most `max` bytes of body each: one, or, for a
/// batch larger than that (16 384 events with kept bodies, spooled during an outage), its
/// first and second halves in turn, the checkpoint with the last events. Each record is
/// replayed as a transaction of its own, in order, and one already stored is skipped.
fn encode_records(batch: &SpooledBatch, max: u32, out: &mut Vec<u8>) -> io::Result<()> {
    encode_part(&batch.events, batch.checkpoint.as_ref(), max, out)
}

/// A part of a [`SpooledBatch`], borrowed: written as the same JSON, so that splitting a
/// batch copies no event.
#[derive(Serialize)]
struct BatchPart<'a> {
    events: &'a [StoredEvent],
    checkpoint: Option<&'a Checkpoint>,
}

fn encode_part(
    events: &[StoredEvent],
    checkpoint: Option<&Checkpoint>,
    max: u32,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let body = serde_json::to_vec(&BatchPart { events, checkpoint }).map_err(io::Error::other)?;
    if let Some(len) = u32::try_from(body.len()).ok().filter(|len| *len <= max) {
        out.reserve(body.len() + 16);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&checksum(&body));
        out.extend_from_slice(&body);
        return Ok(());
    }
    if events.len() < 2 {
        return Err(io::Error::other("an audit event too large to spool"));
    }
    let (first, last) = events.split_at(events.len() / 2);
    encode_part(first, None, max, out)?;
    encode_part(last, checkpoint, max, out)
}

/// Reads until `buffer` is full or the input ends; how many bytes were read.
fn read_up_to(input: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buffer.len() {
        match input.read(&mut buffer[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM] {
    let digest = Sha256::digest(body);
    let mut sum = [0u8; CHECKSUM];
    sum.copy_from_slice(&digest[..CHECKSUM]);
    sum
}

/// What a spool holds, as `audit verify` reports it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SpoolReport {
    /// Batches waiting to be replayed.
    pub batches: usize,
    /// Their events.
    pub events: usize,
    /// Records corrupted or cut short.
    pub corrupt: usize,
}

/// Reads the whole spool in `dir`.
pub fn scan(dir: &Path) -> io::Result<SpoolReport> {
    let mut report = SpoolReport::default();
    let mut reader = Reader::open(&dir.join(SPOOL_FILE), 0)?;
    while let Some(record) = reader.next_record()? {
        match record {
            Record::Batch(batch, _) => {
                report.batches += 1;
                report.events += batch.events.len();
            }
            Record::Corrupt { .. } => report.corrupt += 1,
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: i64) -> SpooledBatch {
        SpooledBatch {
            events: vec![StoredEvent {
                chain_id: "c".into(),
                seq,
                payload: format!("{{\"n\":{seq}}}"),
                ..StoredEvent::default()
            }],
            checkpoint: None,
        }
    }

    #[test]
    fn batches_come_back_in_order_and_a_corrupted_one_is_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path());
        assert!(spool.is_drained());
        for seq in 1..=3 {
            spool.append(&batch(seq)).unwrap();
        }
        assert!(!spool.is_drained());
        assert_eq!(
            scan(dir.path()).unwrap(),
            SpoolReport {
                batches: 3,
                events: 3,
                corrupt: 0
            }
        );

        // Flip a byte in the second record's body.
        let path = dir.path().join(SPOOL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        // Where the records start: at their magic numbers.
        let starts: Vec<usize> = bytes
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == MAGIC)
            .map(|(at, _)| at)
            .collect();
        let (second, third) = (starts[1], starts[2]);
        bytes[second + 20] ^= 0x01;
        // And cut the last record short.
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();

        let mut reader = spool.unreplayed().unwrap();
        let mut seen = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            seen.push(match record {
                Record::Batch(batch, _) => format!("batch {}", batch.events[0].seq),
                Record::Corrupt { at, next } => format!("corrupt at {at}, on at {next}"),
            });
        }
        // Each corrupted record is reported where it starts; reading goes on at the next.
        let end = bytes.len();
        assert_eq!(
            seen,
            [
                "batch 1".to_owned(),
                format!("corrupt at {second}, on at {third}"),
                format!("corrupt at {third}, on at {end}"),
            ]
        );
        assert_eq!(scan(dir.path()).unwrap().corrupt, 2);

        spool.clear().unwrap();
        assert!(spool.is_drained());
        assert_eq!(scan(dir.path()).unwrap(), SpoolReport::default());
    }

    #[test]
    fn a_batch_larger_than_a_record_is_spooled_as_several_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let events: Vec<StoredEvent> = (1..=5).flat_map(|seq| batch(seq).events).collect();
        let checkpoint = Checkpoint {
            chain: "c".into(),
            seq: 5,
            head: "head".into(),
            time_ms: 1,
            mac: "mac".into(),
        };
        let whole = SpooledBatch {
            events,
            checkpoint: Some(checkpoint.clone()),
        };
        let one = serde_json::to_vec(&batch(1)).unwrap().len();
        let mut bytes = Vec::new();
        // Room for two events a record, not five.
        encode_records(&whole, u32::try_from(one * 2 + 20).unwrap(), &mut bytes).unwrap();
        std::fs::write(dir.path().join(SPOOL_FILE), &bytes).unwrap();

        let mut reader = Spool::open(dir.path()).unreplayed().unwrap();
        let mut parts = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            match record {
                Record::Batch(part, _) => parts.push(part),
                Record::Corrupt { at, .. } => panic!("corrupt record at {at}"),
            }
        }
        assert!(parts.len() > 1, "{parts:?}");
        let seqs: Vec<i64> = parts
            .iter()
            .flat_map(|p| &p.events)
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        // The checkpoint signs the last event: it goes with the last record only.
        let checkpoints: Vec<_> = parts.iter().map(|p| p.checkpoint.clone()).collect();
        assert_eq!(checkpoints.last(), Some(&Some(checkpoint)));
        assert!(checkpoints[..parts.len() - 1].iter().all(Option::is_none));

        // One event larger than a record cannot be spooled, and says so.
        let mut rest = Vec::new();
        let error = encode_records(&batch(1), 8, &mut rest).unwrap_err();
        assert!(error.to_string().contains("too large"), "{error}");
    }
}
