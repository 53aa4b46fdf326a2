//! The seam between the node and the world.
//!
//! Everything the outside decides goes through [`Env`]: listening, dialling, the clock,
//! the filesystem and the seed of the node's random numbers. [`TokioEnv`] is production;
//! the simulator supplies its own over turmoil, so the same node code runs in both and a
//! simulated run is reproducible from its seed. Outside the implementations of this trait
//! the node never touches `tokio::net`, `std::fs`, the wall clock or a global RNG.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use quorumkv_client::connection::ByteStream;
use tokio::time::Instant;

/// A bound listener that yields accepted streams.
pub trait Listener: Send + 'static {
    type Stream: ByteStream;

    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

/// A file of the storage log: positional reads and writes, and an explicit sync. Nothing
/// written is durable until `sync` returns (the simulator drops unsynced writes on crash).
pub trait DataFile: Send + Sync + 'static {
    /// Exactly `len` bytes from `offset`; `UnexpectedEof` if the file is shorter.
    fn read_at(&self, offset: u64, len: usize) -> impl Future<Output = io::Result<Vec<u8>>> + Send;

    /// All of `bytes` at `offset`.
    fn write_at(&self, offset: u64, bytes: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;

    fn sync(&self) -> impl Future<Output = io::Result<()>> + Send;

    fn size(&self) -> impl Future<Output = io::Result<u64>> + Send;

    /// Cuts the file to `len` bytes (a torn tail found on recovery).
    fn truncate(&self, len: u64) -> impl Future<Output = io::Result<()>> + Send;
}

pub trait Env: Clone + Send + Sync + 'static {
    type Stream: ByteStream;
    type Listener: Listener<Stream = Self::Stream>;
    type File: DataFile;

    fn bind(&self, address: &str) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    fn connect(&self, address: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// Monotonic time, for timeouts and the failure detector.
    fn now(&self) -> Instant;

    /// Milliseconds since the Unix epoch, for ages that must survive a restart (hints,
    /// tombstone grace). Never used to order versions.
    fn wall_clock_millis(&self) -> u64;

    /// The seed of this node's random number generator.
    fn rng_seed(&self) -> u64;

    /// The file's bytes, or `None` when it does not exist.
    fn read_file(&self, path: &Path) -> impl Future<Output = io::Result<Option<Vec<u8>>>> + Send;

    /// Replaces the file's content durably: write a temporary file, fsync, rename.
    fn write_file_durably(
        &self,
        path: &Path,
        bytes: Vec<u8>,
    ) -> impl Future<Output = io::Result<()>> + Send;

    fn create_dir_all(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;

    /// Opens a file for reading and writing, creating it if missing.
    fn open_file(&self, path: &Path) -> impl Future<Output = io::Result<Self::File>> + Send;

    /// The paths of the entries of a directory, sorted.
    fn list_dir(&self, path: &Path) -> impl Future<Output = io::Result<Vec<PathBuf>>> + Send;

    fn remove_file(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;

    /// Makes creations, renames and removals in the directory durable.
    fn sync_dir(&self, path: &Path) -> impl Future<Output = io::Result<()>> + Send;
}

/// Real sockets, the real clock, the real disk.
#[derive(Clone, Debug, Default)]
pub struct TokioEnv;

pub struct TokioListener(tokio::net::TcpListener);

impl Listener for TokioListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, String)> {
        let (stream, peer) = self.0.accept().await?;
        // Replies are small and latency-bound; never wait to coalesce them.
        stream.set_nodelay(true)?;
        Ok((stream, peer.to_string()))
    }
}

/// A real file; every operation runs on tokio's blocking pool.
pub struct TokioFile(std::sync::Arc<std::fs::File>);

impl TokioFile {
    async fn blocking<T, F>(&self, operation: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&std::fs::File) -> io::Result<T> + Send + 'static,
    {
        let file = self.0.clone();
        tokio::task::spawn_blocking(move || operation(&file))
            .await
            .map_err(io::Error::other)?
    }
}

/// Reads and writes up to this size run on the calling task: they copy from or into the
/// page cache in microseconds, while a hop to the blocking pool and back costs two thread
/// wake-ups, which on a loaded node cost more than the copy. Larger ones (recovery scans,
/// compaction batches) and every fsync go to the blocking pool. A read that misses the
/// cache stalls one worker for a disk read; that is the price of the fast path.
const INLINE_IO_BYTES: usize = 64 * 1024;

impl DataFile for TokioFile {
    async fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let read = move |file: &std::fs::File| {
            let mut buffer = vec![0u8; len];
            file.read_exact_at(&mut buffer, offset)?;
            Ok(buffer)
        };
        if len <= INLINE_IO_BYTES {
            return read(&self.0);
        }
        self.blocking(read).await
    }

    async fn write_at(&self, offset: u64, bytes: Vec<u8>) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if bytes.len() <= INLINE_IO_BYTES {
            return self.0.write_all_at(&bytes, offset);
        }
        self.blocking(move |file| file.write_all_at(&bytes, offset))
            .await
    }

    async fn sync(&self) -> io::Result<()> {
        self.blocking(|file| file.sync_data()).await
    }

    async fn size(&self) -> io::Result<u64> {
        self.blocking(|file| Ok(file.metadata()?.len())).await
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.blocking(move |file| file.set_len(len)).await
    }
}

impl Env for TokioEnv {
    type Stream = tokio::net::TcpStream;
    type Listener = TokioListener;
    type File = TokioFile;

    async fn bind(&self, address: &str) -> io::Result<TokioListener> {
        Ok(TokioListener(tokio::net::TcpListener::bind(address).await?))
    }

    async fn connect(&self, address: &str) -> io::Result<tokio::net::TcpStream> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall_clock_millis(&self) -> u64 {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        since_epoch.as_millis() as u64
    }

    fn rng_seed(&self) -> u64 {
        rand::random()
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    async fn write_file_durably(&self, path: &Path, bytes: Vec<u8>) -> io::Result<()> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || write_then_rename(&path, &bytes))
            .await
            .map_err(io::Error::other)?
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        tokio::fs::create_dir_all(path).await
    }

    async fn open_file(&self, path: &Path) -> io::Result<TokioFile> {
        let path = path.to_owned();
        let open = move || {
            let mut options = std::fs::OpenOptions::new();
            options.read(true).write(true).create(true).truncate(false);
            options.open(path)
        };
        let file = tokio::task::spawn_blocking(open)
            .await
            .map_err(io::Error::other)??;
        Ok(TokioFile(std::sync::Arc::new(file)))
    }

    async fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut entries = tokio::fs::read_dir(path).await?;
        let mut paths = Vec::new();
        while let Some(entry) = entries.next_entry().await? {
            paths.push(entry.path());
        }
        paths.sort();
        Ok(paths)
    }

    async fn remove_file(&self, path: &Path) -> io::Result<()> {
        tokio::fs::remove_file(path).await
    }

    async fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let path = path.to_owned();
        let sync = move || std::fs::File::open(path)?.sync_all();
        tokio::task::spawn_blocking(sync)
            .await
            .map_err(io::Error::other)?
    }
}

/// A crash leaves either the old file or the new one, never a torn mix.
fn write_then_rename(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;

    let mut temporary = PathBuf::from(path);
    temporary.as_mut_os_string().push(".tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
