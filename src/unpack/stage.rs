//! The decompressing half of a layer's unpacking, on a thread of its own.
//!
//! Decompressing and hashing a layer costs about as much CPU as creating its files, so the two
//! halves run side by side: one thread inflates and hashes (compressed bytes and diff_id), the
//! other applies tar entries. A big layer, which bounds the whole pull, then uses two cores.
//! Buffers go round between the two threads, so memory stays a few fixed buffers per layer.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Size of the buffers handed from the decompressor to the tar reader.
const CHUNK: usize = 256 * 1024;
/// Buffers filled ahead of the tar reader.
const DEPTH: usize = 4;

/// The decompressor's side.
pub(super) struct Producer {
    full: SyncSender<io::Result<Vec<u8>>>,
    empty: Receiver<Vec<u8>>,
}

/// The tar reader's side: reads the buffers in order and sends each back once consumed.
pub(super) struct ChunkReader {
    full: Receiver<io::Result<Vec<u8>>>,
    empty: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

/// A connected pair.
pub(super) fn channel() -> (Producer, ChunkReader) {
    let (full_tx, full_rx) = sync_channel(DEPTH);
    // Room for every buffer in circulation: returning one never blocks.
    let (empty_tx, empty_rx) = sync_channel(DEPTH + 2);
    let producer = Producer {
        full: full_tx,
        empty: empty_rx,
    };
    let reader = ChunkReader {
        full: full_rx,
        empty: empty_tx,
        current: Vec::new(),
        pos: 0,
    };
    (producer, reader)
}

impl Producer {
    /// Fills buffers from `source` until its end or first error, both passed on to the reader.
    /// False when the reader went away first.
    pub(super) fn fill_from(self, source: &mut impl Read) -> bool {
        loop {
            let mut buf = self.empty.try_recv().unwrap_or_default();
            buf.resize(CHUNK, 0);
            let read = loop {
                match source.read(&mut buf) {
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    read => break read,
                }
            };
            let end = matches!(read, Ok(0) | Err(_));
            let sent = self.full.send(read.map(|n| {
                buf.truncate(n);
                buf
            }));
            if sent.is_err() {
                return false;
            }
            if end {
                return true;
            }
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            let next = match self.full.recv() {
                Ok(next) => next?,
                // The producer stops after its end of stream or error, both already read.
                Err(_) => return Ok(0),
            };
            if next.is_empty() {
                return Ok(0);
            }
            let used = std::mem::replace(&mut self.current, next);
            self.pos = 0;
            // The producer allocates a new buffer when none comes back in time.
            let _ = self.empty.try_send(used);
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
