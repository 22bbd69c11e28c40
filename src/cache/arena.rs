//! The body arena: mid-sized stored bodies ([`MIN_BODY`] to [`MAX_BODY`]
//! bytes) kept in one shared-memory file (`memfd`), so that a hit can hand them to the
//! kernel with `sendfile(2)` instead of copying them into the socket — the
//! memory-cache equivalent of nginx serving its cache files with
//! `sendfile on`. For a 32 KiB hit that copy was a quarter of Strata's CPU
//! (docs/performance.md §6).
//!
//! Everything else sees an ordinary `Bytes`: the file is mapped once,
//! shared, and a stored body is a [`Bytes::from_owner`] slice of that
//! mapping whose owner gives its pages back when the last clone goes.
//! `server/sendfile.rs` recognises such slices among the buffers hyper
//! writes and sends them from the file.
//!
//! **Why freed pages are safe to reuse:** `sendfile` queues references to
//! the file's pages, not copies, and the socket may still hold them after
//! the body was dropped. A freed range is therefore *punched out* of the
//! file (`fallocate(PUNCH_HOLE)`) before it is reused: the page cache lets
//! go of those pages while queued socket buffers keep them alive, and the
//! next body written there gets fresh pages. Ranges are whole pages, so a
//! punch never zeroes part of a page in place — provided the file's pages
//! are 4 KiB: with shared-memory huge pages (or large folios) a punch
//! inside a 2 MiB page that a socket still references cannot split it and
//! zeroes the range in place, and the next body is written into the very
//! pages the socket will send (shown with a tmpfs mounted `huge=always`).
//! So no arena is made unless `shmem_enabled` (and every per-size
//! `hugepages-*/shmem_enabled`) rules huge pages out for `write(2)`:
//! `never`, `deny` or `advise` (`inherit` follows the global value). If a
//! punch fails the range is never reused (leaked, with a warning).
//!
//! Allocation is first-fit by size over free page runs, coalesced on
//! release (a `BTreeMap`/`BTreeSet` pair under one mutex, held for a few
//! map operations and never across an `.await`). No crate on this machine
//! offers a range allocator over a file offset space, and it is 60 lines.
//!
//! Memory: bodies here are counted by the memory tier's weigher like any
//! other; the pages show in the system's `Shmem` (and in the process's
//! `RssShmem` once read through the mapping, e.g. by compression), and
//! leave it when the body is evicted and its last clone dropped. The
//! mapping reserves [`RESERVE`] bytes of address space, not memory; a body
//! that does not fit (or any failure) is simply kept on the heap.
//!
//! One arena per process, made by the first server started with
//! `server.sendfile = true` (the default; Linux only).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;

/// Bodies smaller than this (bytes) stay on the heap. Not measured: the
/// copy `sendfile` saves shrinks with the body (about 3 µs at 32 KiB)
/// while its second system call and page handling do not, so this is
/// about where they cross.
pub const MIN_BODY: usize = 16 * 1024;

/// Bodies larger than this (bytes) stay on the heap. Measured on loopback
/// (CPU per hit, sendfile vs writev, one run): 32 KiB 9.7 vs 11.1 µs,
/// 64 KiB 13.2 vs 14.6, but 128 KiB 62 vs 56, 256 KiB 106 vs 44 and
/// 1 MiB 370 vs 195: once a body no longer fits the socket's send space
/// in one go, sending page references costs the kernel more than the
/// copy it saves (docs/performance.md §6).
pub const MAX_BODY: usize = 64 * 1024;

/// Address space (bytes) reserved for the mapping; memory is used only
/// for pages written.
pub const RESERVE: u64 = 256 << 30;

const PAGE: u64 = 4096;

static ARENA: OnceLock<Option<Arena>> = OnceLock::new();

/// The process's arena, if one was made.
#[inline]
pub fn get() -> Option<&'static Arena> {
    ARENA.get().and_then(Option::as_ref)
}

/// Makes the process's arena if none was tried yet; returns whether one
/// exists. A failure (not Linux, no `memfd`, no address space) is logged
/// once and leaves every body on the heap.
pub fn enable() -> bool {
    ARENA
        .get_or_init(|| match Arena::create(RESERVE) {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(error = %e, "no body arena: large hits are copied to sockets");
                None
            }
        })
        .is_some()
}

/// Copies a body given as `chunks` (`total` bytes together) into one
/// allocation of its own: the arena when there is one and the body's size
/// suits it, a mapping of its own when it is large (`cache/large.rs`),
/// the heap otherwise.
pub fn collect(chunks: &[Bytes], total: usize) -> Bytes {
    if (MIN_BODY..=MAX_BODY).contains(&total) {
        if let Some(b) = get().and_then(|a| a.store(chunks, total)) {
            return b;
        }
    }
    if let Some(b) = super::large::collect(chunks, total) {
        return b;
    }
    let mut buf = Vec::with_capacity(total);
    for c in chunks {
        buf.extend_from_slice(c);
    }
    Bytes::from(buf)
}

/// Bytes of memory `body` holds: its length, rounded up to whole pages
/// when it lives in the arena (what the memory tier's weigher counts).
pub fn footprint(body: &[u8]) -> u64 {
    match get() {
        Some(a) if a.locate(body).is_some() => (body.len() as u64).div_ceil(PAGE) * PAGE,
        _ => body.len() as u64,
    }
}

/// Why this host can never have an arena, if it cannot: not Linux, or
/// shared memory that may use huge pages for writes (see the module doc).
/// For tests and diagnostics.
pub fn unsupported_here() -> Option<String> {
    #[cfg(target_os = "linux")]
    return huge_shmem_setting();
    #[cfg(not(target_os = "linux"))]
    return Some("not Linux".to_string());
}

/// The selection of each `shmem_enabled` setting that lets `write(2)` to
/// a memfd allocate huge pages or large folios, if any (see the module
/// doc); `None` when there is none or THP is not built in.
#[cfg(target_os = "linux")]
fn huge_shmem_setting() -> Option<String> {
    const THP: &str = "/sys/kernel/mm/transparent_hugepage";
    let global = std::fs::read_to_string(format!("{THP}/shmem_enabled")).ok()?;
    let mut sizes = Vec::new();
    if let Ok(dir) = std::fs::read_dir(THP) {
        for entry in dir.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("hugepages-")
            {
                if let Ok(s) = std::fs::read_to_string(entry.path().join("shmem_enabled")) {
                    sizes.push((entry.file_name().to_string_lossy().into_owned(), s));
                }
            }
        }
    }
    huge_shmem_in(&global, sizes.iter().map(|(n, s)| (n.as_str(), s.as_str())))
}

/// [`huge_shmem_setting`] over the files' contents (the selected value is
/// the bracketed word).
fn huge_shmem_in<'a>(
    global: &str,
    sizes: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    let selected = |s: &str| -> String {
        s.split_whitespace()
            .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
            .unwrap_or(s.trim())
            .to_string()
    };
    let safe = |v: &str| matches!(v, "never" | "deny" | "advise");
    let global = selected(global);
    if !safe(&global) {
        return Some(format!("shmem_enabled = {global}"));
    }
    for (name, content) in sizes {
        let v = selected(content);
        if v != "inherit" && !safe(&v) {
            return Some(format!("{name}/shmem_enabled = {v}"));
        }
    }
    None
}

/// Moves `body` into the arena when its size suits it and there is one,
/// or into a mapping of its own when it is large (`cache/large.rs`);
/// otherwise returns it unchanged.
pub fn adopt(body: Bytes) -> Bytes {
    if !(MIN_BODY..=MAX_BODY).contains(&body.len()) {
        let len = body.len();
        return super::large::collect(std::slice::from_ref(&body), len).unwrap_or(body);
    }
    match get().and_then(|a| a.store(std::slice::from_ref(&body), body.len())) {
        Some(b) => b,
        None => body,
    }
}

/// The shared-memory file and its mapping.
pub struct Arena {
    #[cfg(target_os = "linux")]
    fd: std::os::fd::OwnedFd,
    /// Address of the mapping (as an integer: the mapping is never
    /// unmapped, and every access goes through a [`Slot`]).
    base: usize,
    len: usize,
    free: Mutex<FreeRuns>,
    /// Bytes of pages held by live bodies.
    in_use: AtomicU64,
}

impl Arena {
    #[cfg(target_os = "linux")]
    fn create(reserve: u64) -> std::io::Result<Arena> {
        use rustix::fs::{ftruncate, memfd_create, MemfdFlags};
        use rustix::mm::{mmap, MapFlags, ProtFlags};
        if rustix::param::page_size() as u64 != PAGE {
            return Err(std::io::Error::other("page size is not 4 KiB"));
        }
        // ftruncate past RLIMIT_FSIZE raises SIGXFSZ (kills the process):
        // stay below the limit.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Fsize).current;
        let reserve = limit.map_or(reserve, |l| reserve.min(l / PAGE * PAGE));
        if reserve < MAX_BODY as u64 {
            return Err(std::io::Error::other(
                "file size limit (ulimit -f) too small",
            ));
        }
        if let Some(setting) = huge_shmem_setting() {
            return Err(std::io::Error::other(format!(
                "shared memory may use huge pages ({setting})"
            )));
        }
        let len = usize::try_from(reserve).map_err(std::io::Error::other)?;
        let fd = memfd_create("strata-bodies", MemfdFlags::CLOEXEC)?;
        ftruncate(&fd, reserve)?;
        // SAFETY: a new shared mapping of our own file at an address the
        // kernel picks; nothing else maps or writes it.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::NORESERVE,
                &fd,
                0,
            )?
        };
        // Huge pages would make a punch zero part of a page in place
        // (shmem splits them when it can, zeroes when it cannot).
        // SAFETY: advice on the mapping just made.
        let _ = unsafe { rustix::mm::madvise(base, len, rustix::mm::Advice::LinuxNoHugepage) };
        Ok(Arena {
            fd,
            base: base as usize,
            len,
            free: Mutex::new(FreeRuns::new(reserve / PAGE)),
            in_use: AtomicU64::new(0),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn create(_reserve: u64) -> std::io::Result<Arena> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "sendfile from shared memory needs Linux",
        ))
    }

    /// The file, for `sendfile`.
    #[cfg(target_os = "linux")]
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Where `bytes` lies in the file (its offset in bytes), if it is a
    /// slice of a body stored here. Two compares: cheap enough for every
    /// buffer a socket writes.
    #[inline]
    pub fn locate(&self, bytes: &[u8]) -> Option<u64> {
        let offset = (bytes.as_ptr() as usize).wrapping_sub(self.base);
        (!bytes.is_empty() && offset < self.len && bytes.len() <= self.len - offset)
            .then_some(offset as u64)
    }

    /// Bytes of pages held by live bodies.
    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Copies `chunks` (`total` bytes) into a new range; `None` when the
    /// arena is full or the write fails (the caller keeps the heap).
    fn store(&'static self, chunks: &[Bytes], total: usize) -> Option<Bytes> {
        let pages = (total as u64).div_ceil(PAGE).max(1);
        let start = self.lock().take(pages)?;
        let slot = Slot {
            arena: self,
            start,
            pages,
            len: total,
        };
        self.in_use.fetch_add(pages * PAGE, Ordering::Relaxed);
        // From here on, dropping `slot` gives the range back.
        let mut offset = start * PAGE;
        for chunk in chunks {
            if let Err(e) = self.write_at(chunk, offset) {
                tracing::debug!(error = %e, "body arena write failed: body kept on the heap");
                return None;
            }
            offset += chunk.len() as u64;
        }
        Some(Bytes::from_owner(slot))
    }

    /// Writes through the file (no page faults in the mapping; the mapping
    /// sees the same pages).
    #[cfg(target_os = "linux")]
    fn write_at(&self, mut data: &[u8], mut offset: u64) -> std::io::Result<()> {
        while !data.is_empty() {
            match rustix::io::pwrite(&self.fd, data, offset) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    data = &data[n..];
                    offset += n as u64;
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn write_at(&self, _data: &[u8], _offset: u64) -> std::io::Result<()> {
        Err(std::io::ErrorKind::Unsupported.into())
    }

    /// Drops the range's pages from the file, then makes it reusable.
    fn release(&self, start: u64, pages: u64) {
        #[cfg(target_os = "linux")]
        {
            use rustix::fs::{fallocate, FallocateFlags};
            let punched = fallocate(
                &self.fd,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                start * PAGE,
                pages * PAGE,
            );
            if let Err(e) = punched {
                // Reusing the range could change bytes a socket still
                // holds: leak it instead.
                // Its pages stay resident: still counted in `in_use`.
                tracing::warn!(error = %e, bytes = pages * PAGE, "body arena: cannot free a range; it is not reused");
                return;
            }
        }
        self.in_use.fetch_sub(pages * PAGE, Ordering::Relaxed);
        self.lock().give(start, pages);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FreeRuns> {
        // The runs are consistent after every operation: a panic elsewhere
        // while the lock was held cannot leave them half-changed.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One stored body's range of the arena: its bytes while it lives, its
/// pages given back when it goes.
struct Slot {
    arena: &'static Arena,
    /// First page.
    start: u64,
    pages: u64,
    /// Body length in bytes (at most `pages * PAGE`).
    len: usize,
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        let addr = self.arena.base + (self.start * PAGE) as usize;
        // SAFETY: the range lies inside the mapping (the allocator hands
        // out pages below `len / PAGE`), it is this slot's alone until the
        // slot is dropped, and it was written before the slot was shared.
        unsafe { std::slice::from_raw_parts(addr as *const u8, self.len) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.arena.release(self.start, self.pages);
    }
}

/// Free runs of pages: first fit by size, coalesced on release. `top` is
/// the first page never handed out (everything from it is free).
struct FreeRuns {
    by_start: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    top: u64,
    limit: u64,
}

impl FreeRuns {
    fn new(limit: u64) -> FreeRuns {
        FreeRuns {
            by_start: BTreeMap::new(),
            by_size: BTreeSet::new(),
            top: 0,
            limit,
        }
    }

    /// The first page of `n` free ones, taken.
    fn take(&mut self, n: u64) -> Option<u64> {
        if let Some(&(len, start)) = self.by_size.range((n, 0)..).next() {
            self.remove(start, len);
            if len > n {
                self.insert(start + n, len - n);
            }
            return Some(start);
        }
        let start = self.top;
        (start + n <= self.limit).then(|| {
            self.top += n;
            start
        })
    }

    /// Gives back `n` pages from `start`.
    fn give(&mut self, mut start: u64, mut n: u64) {
        if let Some((&before, &len)) = self.by_start.range(..start).next_back() {
            if before + len == start {
                self.remove(before, len);
                start = before;
                n += len;
            }
        }
        if let Some(&len) = self.by_start.get(&(start + n)) {
            self.remove(start + n, len);
            n += len;
        }
        if start + n == self.top {
            self.top = start;
        } else {
            self.insert(start, n);
        }
    }

    fn insert(&mut self, start: u64, n: u64) {
        self.by_start.insert(start, n);
        self.by_size.insert((n, start));
    }

    fn remove(&mut self, start: u64, n: u64) {
        self.by_start.remove(&start);
        self.by_size.remove(&(n, start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_reused_split_and_coalesced() {
        let mut f = FreeRuns::new(100);
        let a = f.take(10).unwrap();
        let b = f.take(5).unwrap();
        let c = f.take(20).unwrap();
        assert_eq!((a, b, c, f.top), (0, 10, 15, 35));
        f.give(a, 10);
        // A smaller request splits the freed run.
        assert_eq!(f.take(4), Some(0));
        assert_eq!(f.by_start.get(&4), Some(&6));
        // Freeing b merges with the rest of a's run: pages 4..15.
        f.give(b, 5);
        assert_eq!(f.by_start.get(&4), Some(&11));
        // Freeing the last run lowers the top through everything free.
        f.give(c, 20);
        assert_eq!(f.top, 4);
        assert!(f.by_start.is_empty() && f.by_size.is_empty());
        f.give(0, 4);
        assert_eq!(f.top, 0);
        // The limit holds.
        assert_eq!(f.take(100), Some(0));
        assert_eq!(f.take(1), None);
    }

    #[test]
    fn the_smallest_fitting_run_is_taken() {
        let mut f = FreeRuns::new(1000);
        let runs: Vec<u64> = [8, 1, 3, 1, 5, 1]
            .iter()
            .map(|&n| f.take(n).unwrap())
            .collect();
        f.give(runs[0], 8);
        f.give(runs[2], 3);
        f.give(runs[4], 5);
        assert_eq!(f.take(3), Some(runs[2]));
        assert_eq!(f.take(4), Some(runs[4]));
        assert_eq!(f.take(9), Some(f.top - 9));
    }

    /// Random take/give against a page bitmap: no page handed out twice,
    /// free runs never adjacent, never touching `top`, both maps agree.
    #[test]
    fn free_runs_match_a_bitmap_model() {
        const LIMIT: u64 = 600;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let mut f = FreeRuns::new(LIMIT);
        let mut used = vec![false; LIMIT as usize];
        let mut live: Vec<(u64, u64)> = Vec::new();
        for step in 0..200_000 {
            if live.is_empty() || rnd(3) != 0 {
                let n = 1 + rnd(16);
                match f.take(n) {
                    Some(s) => {
                        assert!(s + n <= LIMIT, "step {step}");
                        for p in s..s + n {
                            assert!(!used[p as usize], "step {step}: page {p} taken twice");
                            used[p as usize] = true;
                        }
                        live.push((s, n));
                    }
                    None => {
                        // Refused only if no free run of n pages exists.
                        let mut run = 0;
                        for &u in &used {
                            run = if u { 0 } else { run + 1 };
                            assert!(run < n, "step {step}: {n} free pages refused");
                        }
                    }
                }
            } else {
                let (s, n) = live.swap_remove(rnd(live.len() as u64) as usize);
                for p in s..s + n {
                    used[p as usize] = false;
                }
                f.give(s, n);
            }
            // Invariants.
            assert_eq!(f.by_start.len(), f.by_size.len());
            let mut prev_end = None;
            for (&s, &n) in &f.by_start {
                assert!(f.by_size.contains(&(n, s)));
                assert!(n > 0 && s + n < f.top, "step {step}: run touches top");
                assert_ne!(prev_end, Some(s), "step {step}: adjacent runs");
                prev_end = Some(s + n);
                assert!((s..s + n).all(|p| !used[p as usize]));
            }
            assert!((f.top..LIMIT).all(|p| !used[p as usize]));
        }
    }

    /// A file-size limit (`ulimit -f`, systemd `LimitFSIZE=`) makes
    /// `enable` fail softly (module doc) instead of SIGXFSZ killing the
    /// process.
    #[cfg(target_os = "linux")]
    #[test]
    fn enable_under_a_file_size_limit_does_not_kill_the_process() {
        if std::env::var_os("STRATA_ARENA_TEST_CHILD").is_some() {
            let _ = enable();
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg("ulimit -f 1048576 && exec \"$0\" --exact --test-threads=1 cache::arena::tests::enable_under_a_file_size_limit_does_not_kill_the_process")
            .arg(exe)
            .env("STRATA_ARENA_TEST_CHILD", "1")
            .status()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.success(),
            "child under ulimit -f 1 GiB: {status:?} (signal {:?})",
            status.signal()
        );
    }

    #[test]
    fn huge_page_settings_that_allow_write_faults_refuse_the_arena() {
        let none = std::iter::empty();
        assert_eq!(
            huge_shmem_in("always within_size advise [never] deny force", none),
            None
        );
        for v in ["always", "within_size", "force"] {
            let line = "always within_size advise never deny force".replace(v, &format!("[{v}]"));
            assert!(huge_shmem_in(&line, std::iter::empty()).is_some(), "{v}");
        }
        assert_eq!(huge_shmem_in("[advise]", std::iter::empty()), None);
        assert_eq!(huge_shmem_in("[deny]", std::iter::empty()), None);
        let sizes = [(
            "hugepages-64kB",
            "always [inherit] within_size advise never",
        )];
        assert_eq!(huge_shmem_in("[never]", sizes.into_iter()), None);
        let sizes = [(
            "hugepages-64kB",
            "[always] inherit within_size advise never",
        )];
        assert_eq!(
            huge_shmem_in("[never]", sizes.into_iter()).as_deref(),
            Some("hugepages-64kB/shmem_enabled = always")
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_stored_body_reads_back_and_frees_its_pages() {
        if let Some(why) = unsupported_here() {
            eprintln!("skipped: no body arena on this host ({why})");
            return;
        }
        assert!(enable());
        let arena = get().unwrap();
        let body: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Bytes> = body.chunks(7000).map(Bytes::copy_from_slice).collect();
        let stored = collect(&chunks, body.len());
        assert_eq!(&stored[..], &body[..]);
        let offset = arena
            .locate(&stored)
            .expect("a large body lives in the arena");
        assert_eq!(offset % PAGE, 0);
        assert_eq!(arena.locate(&stored[10..20]), Some(offset + 10));
        assert_eq!(arena.locate(&body), None);
        // Small bodies stay on the heap.
        let small = collect(&[Bytes::from_static(b"tiny")], 4);
        assert_eq!(arena.locate(&small), None);
        let slice = stored.slice(30_000..);
        drop(stored);
        // A slice keeps the range.
        assert_eq!(&slice[..], &body[30_000..]);
        drop(slice);
        // Freed and punched: a new body there reads as itself.
        let other = adopt(Bytes::from(vec![9u8; 60_000]));
        assert!(arena.locate(&other).is_some());
        assert!(other.iter().all(|&b| b == 9));
        // Large bodies stay on the heap too.
        let large = adopt(Bytes::from(vec![1u8; MAX_BODY + 1]));
        assert_eq!(arena.locate(&large), None);
    }
}
