//! The node's [`Env`] inside turmoil: simulated sockets, clock and disk.
//!
//! Time is turmoil's (tokio's clock inside each simulated host), the wall clock is
//! turmoil's fixed epoch plus simulated time, files live in the host's simulated
//! filesystem (unsynced writes vanish on a crash), and the node's seed is derived from the
//! run's seed, the node's name and how many times it has booted, so a restarted node draws
//! new numbers (a new epoch) but the same ones in every replay.

use std::io;
use std::path::{Path, PathBuf};

use quorumkv_node::env::{DataFile, Env, Listener};
use tokio::time::Instant;
use turmoil::fs::shim::tokio::fs as simfs;
use xxhash_rust::xxh3::xxh3_64_with_seed;

#[derive(Clone, Debug)]
pub struct SimEnv {
    seed: u64,
    torn_writes: bool,
}

impl SimEnv {
    pub fn new(run_seed: u64, node: &str, boot: u64) -> Self {
        let mut name = node.as_bytes().to_vec();
        name.extend_from_slice(&boot.to_le_bytes());
        SimEnv {
            seed: xxh3_64_with_seed(&name, run_seed),
            torn_writes: false,
        }
    }

    /// Splits every data-file write in two at a point drawn from the seed, as a disk
    /// writes a large request in sectors. With turmoil's random durability of unsynced
    /// writes, a crash can then keep the first half of a record and not the second (a
    /// torn tail), or the second and not the first.
    pub fn with_torn_writes(mut self) -> Self {
        self.torn_writes = true;
        self
    }
}

pub struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    type Stream = turmoil::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((stream, peer.to_string()))
    }
}

/// A file in the host's simulated filesystem.
pub struct SimFile {
    file: simfs::File,
    /// Seed of the split points when writes are torn (see [`SimEnv::with_torn_writes`]).
    tear: Option<u64>,
}

impl SimFile {
    async fn write_all_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < bytes.len() {
            match self
                .file
                .write_at(&bytes[written..], offset + written as u64)
                .await?
            {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => written += n,
            }
        }
        Ok(())
    }
}

impl DataFile for SimFile {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buffer = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match self
                .file
                .read_at(&mut buffer[filled..], offset + filled as u64)
                .await?
            {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => filled += n,
            }
        }
        Ok(buffer)
    }

    async fn write_at(&self, offset: u64, bytes: Vec<u8>) -> io::Result<()> {
        match self.tear {
            Some(seed) if bytes.len() > 1 => {
                let cut = 1
                    + (xxh3_64_with_seed(&offset.to_le_bytes(), seed) as usize) % (bytes.len() - 1);
                self.write_all_at(offset, &bytes[..cut]).await?;
                self.write_all_at(offset + cut as u64, &bytes[cut..]).await
            }
            _ => self.write_all_at(offset, &bytes).await,
        }
    }

    async fn sync(&self) -> io::Result<()> {
        self.file.sync_all().await
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata().await?.len())
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len).await
    }
}

impl Env for SimEnv {
    type Stream = turmoil::net::TcpStream;
    type Listener = SimListener;
    type File = SimFile;

    async fn bind(&self, address: &str) -> io::Result<SimListener> {
        // A host binds its own port; turmoil routes by host name, so only the port matters.
        let port = address.rsplit(':').next().unwrap_or_default();
        let bound = turmoil::net::TcpListener::bind(format!("0.0.0.0:{port}")).await?;
        Ok(SimListener(bound))
    }

    async fn connect(&self, address: &str) -> io::Result<turmoil::net::TcpStream> {
        turmoil::net::TcpStream::connect(address).await
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_clock_millis(&self) -> u64 {
        turmoil::since_epoch().unwrap_or_default().as_millis() as u64
    }

    fn rng_seed(&self) -> u64 {
        self.seed
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match simfs::read(path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn write_file_durably(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let mut temporary = path.to_owned();
        temporary.as_mut_os_string().push(".tmp");
        let file = simfs::File::create(&temporary).await?;
        let mut written = 0;
        while written < bytes.len() {
            match file.write_at(&bytes[written..], written as u64).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => written += n,
            }
        }
        file.sync_all().await?;
        simfs::rename(&temporary, path).await?;
        if let Some(dir) = path.parent() {
            simfs::sync_dir(dir).await?;
        }
        Ok(())
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        simfs::create_dir_all(path).await
    }

    async fn open_file(&self, path: &Path) -> io::Result<SimFile> {
        let mut options = simfs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        Ok(SimFile {
            file: options.open(path).await?,
            tear: self.torn_writes.then_some(self.seed),
        })
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let entries = simfs::read_dir(path).await?;
        let mut paths = entries
            .map(|entry| entry.map(|e| e.path()))
            .collect::<io::Result<Vec<_>>>()?;
        paths.sort();
        Ok(paths)
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        simfs::remove_file(path).await
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        simfs::sync_dir(path).await
    }
}
