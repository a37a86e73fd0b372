//! The bridge between the async download and the blocking unpacker: chunks travel through a
//! bounded channel (memory stays flat whatever the layer size) and are hashed as they are read,
//! so the compressed digest is known the moment the unpacker reaches the end.

use std::io::{self, Read};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Receiver;

/// Chunks in flight per layer; with registry chunks of 8-64 KiB this bounds a layer's buffers
/// to a few MiB.
pub const CHANNEL_CHUNKS: usize = 32;

/// Reads the chunks sent by the download task; the end of the channel is the end of the blob.
pub struct ChannelReader {
    rx: Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub fn new(rx: Receiver<Bytes>) -> ChannelReader {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Hashes and counts every byte that passes through.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Reads whatever is left, so the digest covers the whole blob even when the unpacker
    /// stopped early, then returns `(sha256:<hex>, size)`.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((format!("sha256:{:x}", self.hasher.finalize()), self.bytes))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}
