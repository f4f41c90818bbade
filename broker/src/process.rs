//! What this process costs: CPU time and resident memory, for `ProcessStats` (benchmarks
//! take differences over a run to report server CPU per message).

/// (user, system) CPU time of the whole process so far, in microseconds.
pub fn cpu_us() -> (u64, u64) {
    // SAFETY: `rusage` is plain data; all-zero bytes are a valid value of it.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `getrusage` writes into the struct we own; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return (0, 0);
    }
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    (us(u.ru_utime), us(u.ru_stime))
}

/// Resident memory (VmRSS) in bytes, from `/proc/self/status`; 0 if it cannot be read.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_used_cpu_and_memory() {
        // Burn a little CPU so the counter has moved.
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let (user, system) = super::cpu_us();
        assert!(user + system > 0);
        assert!(super::rss_bytes() > 0);
    }
}
