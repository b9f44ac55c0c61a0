//! How the process allocates. glibc gives a thread that finds the allocator busy an arena of
//! its own, up to eight per core, and memory freed into one arena is not reused by another:
//! a service whose requests move between tokio's workers and its blocking threads keeps a
//! little of each arena's high-water mark resident. Two arenas hold delivery's resident
//! memory with 100,000 activities queued about 10 MB lower, with no loss of throughput on
//! this machine kind (see the note of `fedsx bench delivery`).
//!
//! glibc also returns freed memory at the top of the heap to the system only past a trim
//! threshold that it raises by itself, up to 32 MB on 64-bit, whenever a large block is
//! freed; after a burst (a batch of hand-offs, a page of entries) a service then keeps tens of
//! MB it no longer uses. A fixed threshold of 128 KiB (glibc's starting value) gives it back:
//! delivery with 100,000 activities queued, 55 → 48 MB resident.

/// Arenas the allocator may use, at most.
const MALLOC_ARENAS: i32 = 2;
/// Free memory at the top of the heap kept before it is given back to the system.
const TRIM_THRESHOLD_BYTES: i32 = 128 * 1024;

/// Limits the allocator's arenas and fixes its trim threshold. Call it first thing in
/// `main`, before any thread starts.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets one of the allocator's tuning parameters (no pointers, no
    // memory handed over); glibc takes it at any time, and no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
}
