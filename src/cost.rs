//! What a step costs the device, counted rather than timed, so that the figures read on any
//! adapter (lavapipe included) carry over to a GPU:
//!
//! - **dispatches**: every kernel launch, by name, from CubeCL's launch observer;
//! - **uploads** and **read-backs**: host -> device and device -> host copies, counted by the
//!   helpers of [`backend`](crate::backend) that every model path uses for them;
//! - **queue submits**: wgpu's own submission index, read before and after through an empty
//!   submit of our own (cubecl-wgpu records each submit's dispatches in at most one compute
//!   pass, so this also bounds the passes);
//! - **host CPU time**: the calling thread's CPU time, which is the time spent recording and
//!   submitting work (on a software adapter it also holds whatever the driver runs inline).
//!
//! A [`Meter`] measures a window that starts and ends with the device idle: around whole steps,
//! each of which ends by reading its results back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cubecl::logging::{Duration as KernelDuration, LaunchObservation, LaunchObserver, TimingMethod, TimingRequest};

static UPLOADS: AtomicU64 = AtomicU64::new(0);
static UPLOAD_BYTES: AtomicU64 = AtomicU64::new(0);
static READBACKS: AtomicU64 = AtomicU64::new(0);
static READBACK_BYTES: AtomicU64 = AtomicU64::new(0);
/// When the latest read-back was asked for, in nanoseconds since [`epoch`].
static LAST_READ: AtomicU64 = AtomicU64::new(0);

/// The process's reference instant for [`LAST_READ`].
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Records that a read-back is about to wait for the device (the `backend` helpers call this).
pub(crate) fn reading() {
    LAST_READ.store(epoch().elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// Records one host -> device copy of `bytes` (the `backend` helpers call this).
pub(crate) fn count_upload(bytes: usize) {
    UPLOADS.fetch_add(1, Ordering::Relaxed);
    UPLOAD_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Records one device -> host read of `bytes` (one synchronisation, however many tensors).
pub(crate) fn count_readback(bytes: usize) {
    READBACKS.fetch_add(1, Ordering::Relaxed);
    READBACK_BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
}

/// Counts of one measured window (or their mean over several steps, see [`Cost::per`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cost {
    pub dispatches: f64,
    /// Dispatches by kernel name (CubeCL's names, shortened to the function).
    pub kernels: BTreeMap<String, f64>,
    /// Milliseconds by kernel name, when the window was profiled ([`Meter::start_profiled`]).
    pub kernel_ms: BTreeMap<String, f64>,
    pub uploads: f64,
    pub upload_bytes: f64,
    pub readbacks: f64,
    pub readback_bytes: f64,
    /// Queue submits; `None` where the device is not wgpu's.
    pub submits: Option<f64>,
    /// CPU time of the measuring thread.
    pub host_cpu: Duration,
    /// Wall time from the window's start until its last read-back was asked for: the time to
    /// record and submit the window's work, where the device runs it asynchronously.
    pub enqueue: Duration,
    pub wall: Duration,
}

impl Cost {
    /// The mean of `n` windows measured as one.
    pub fn per(&self, n: usize) -> Cost {
        let n = n.max(1) as f64;
        Cost {
            dispatches: self.dispatches / n,
            kernels: self.kernels.iter().map(|(k, v)| (k.clone(), v / n)).collect(),
            kernel_ms: self.kernel_ms.iter().map(|(k, v)| (k.clone(), v / n)).collect(),
            uploads: self.uploads / n,
            upload_bytes: self.upload_bytes / n,
            readbacks: self.readbacks / n,
            readback_bytes: self.readback_bytes / n,
            submits: self.submits.map(|s| s / n),
            host_cpu: self.host_cpu.div_f64(n),
            enqueue: self.enqueue.div_f64(n),
            wall: self.wall.div_f64(n),
        }
    }

    /// `self - other`, field by field (the cost of what one window did beyond another's).
    pub fn minus(&self, other: &Cost) -> Cost {
        let mut kernels = self.kernels.clone();
        for (k, v) in &other.kernels {
            *kernels.entry(k.clone()).or_default() -= v;
        }
        kernels.retain(|_, v| v.abs() > 1e-9);
        let mut kernel_ms = self.kernel_ms.clone();
        for (k, v) in &other.kernel_ms {
            *kernel_ms.entry(k.clone()).or_default() -= v;
        }
        Cost {
            dispatches: self.dispatches - other.dispatches,
            kernels,
            kernel_ms,
            uploads: self.uploads - other.uploads,
            upload_bytes: self.upload_bytes - other.upload_bytes,
            readbacks: self.readbacks - other.readbacks,
            readback_bytes: self.readback_bytes - other.readback_bytes,
            submits: self.submits.zip(other.submits).map(|(a, b)| a - b),
            host_cpu: self.host_cpu.saturating_sub(other.host_cpu),
            enqueue: self.enqueue.saturating_sub(other.enqueue),
            wall: self.wall.saturating_sub(other.wall),
        }
    }

    /// `self + k * other` (extrapolating per-layer costs).
    pub fn plus_times(&self, other: &Cost, k: f64) -> Cost {
        let mut kernels = self.kernels.clone();
        for (name, v) in &other.kernels {
            *kernels.entry(name.clone()).or_default() += k * v;
        }
        let mut kernel_ms = self.kernel_ms.clone();
        for (name, v) in &other.kernel_ms {
            *kernel_ms.entry(name.clone()).or_default() += k * v;
        }
        Cost {
            dispatches: self.dispatches + k * other.dispatches,
            kernels,
            kernel_ms,
            uploads: self.uploads + k * other.uploads,
            upload_bytes: self.upload_bytes + k * other.upload_bytes,
            readbacks: self.readbacks + k * other.readbacks,
            readback_bytes: self.readback_bytes + k * other.readback_bytes,
            // An empty accumulator (no submits counted yet) takes the other's.
            submits: match (self.submits, other.submits) {
                (Some(a), Some(b)) => Some(a + k * b),
                (None, Some(b)) => Some(k * b),
                (a, None) => a,
            },
            host_cpu: self.host_cpu + other.host_cpu.mul_f64(k.max(0.0)),
            enqueue: self.enqueue + other.enqueue.mul_f64(k.max(0.0)),
            wall: self.wall + other.wall.mul_f64(k.max(0.0)),
        }
    }

    /// One line: dispatches, submits, uploads, read-backs, host CPU and enqueue ms.
    pub fn summary(&self) -> String {
        let submits = self.submits.map_or_else(|| "n/a".to_string(), |s| format!("{s:.1}"));
        format!(
            "{:.1} dispatches, {submits} submits, {:.1} uploads ({:.0} B), {:.1} read-backs ({:.0} B), \
             host CPU {:.2} ms, enqueued in {:.2} ms",
            self.dispatches,
            self.uploads,
            self.upload_bytes,
            self.readbacks,
            self.readback_bytes,
            self.host_cpu.as_secs_f64() * 1e3,
            self.enqueue.as_secs_f64() * 1e3
        )
    }

    /// The `n` kernels launched most (or, profiled, taking the most time), as `count × name`
    /// lines (`count × name: ms`).
    pub fn top_kernels(&self, n: usize) -> Vec<String> {
        let by = if self.kernel_ms.is_empty() { &self.kernels } else { &self.kernel_ms };
        let mut v: Vec<(&String, &f64)> = by.iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .map(|(k, _)| {
                let count = self.kernels.get(k).copied().unwrap_or(0.0);
                match self.kernel_ms.get(k) {
                    Some(ms) => format!("{count:.1} × {k}: {ms:.2} ms"),
                    None => format!("{count:.1} × {k}"),
                }
            })
            .collect()
    }
}

/// Counts launches by kernel name, and times them when `profile` is set.
#[derive(Default)]
struct Launches {
    counts: Mutex<BTreeMap<&'static str, u64>>,
    times: Mutex<BTreeMap<&'static str, Duration>>,
    profile: bool,
}

impl LaunchObserver for Launches {
    fn launched(&self, kernel: &'static str) {
        if let Ok(mut m) = self.counts.lock() {
            *m.entry(kernel).or_default() += 1;
        }
    }

    fn timing(&self) -> TimingRequest {
        if self.profile { TimingRequest::Resolved } else { TimingRequest::None }
    }

    fn timed(&self, kernel: &'static str, duration: KernelDuration, _method: TimingMethod) {
        if let Ok(mut m) = self.times.lock() {
            *m.entry(kernel).or_default() += Duration::from_nanos(duration.as_nanos() as u64);
        }
    }
}

/// A measuring window: [`Meter::start`] it with the device idle, [`Meter::finish`] it with the
/// device idle again (after the read-back that ends a step). Windows must not overlap: the
/// launch observer is process-wide.
pub struct Meter {
    launches: Arc<Launches>,
    _observation: LaunchObservation,
    uploads: u64,
    upload_bytes: u64,
    readbacks: u64,
    readback_bytes: u64,
    submit_index: Option<u64>,
    cpu: Option<Duration>,
    t0: Instant,
    t0_nanos: u64,
}

impl Meter {
    pub fn start() -> Meter {
        Self::start_with(false)
    }

    /// A window that also times each kernel, one at a time (so its wall time is not the
    /// pipelined step's): where a step's device time goes.
    pub fn start_profiled() -> Meter {
        Self::start_with(true)
    }

    fn start_with(profile: bool) -> Meter {
        let launches = Arc::new(Launches { profile, ..Launches::default() });
        let observation = LaunchObservation::new(launches.clone());
        let submit_index = crate::backend::submission_index();
        Meter {
            launches,
            _observation: observation,
            uploads: UPLOADS.load(Ordering::Relaxed),
            upload_bytes: UPLOAD_BYTES.load(Ordering::Relaxed),
            readbacks: READBACKS.load(Ordering::Relaxed),
            readback_bytes: READBACK_BYTES.load(Ordering::Relaxed),
            submit_index,
            cpu: thread_cpu_time(),
            t0: Instant::now(),
            t0_nanos: epoch().elapsed().as_nanos() as u64,
        }
    }

    pub fn finish(self) -> Cost {
        let wall = self.t0.elapsed();
        let last_read = LAST_READ.load(Ordering::Relaxed);
        let enqueue = if last_read > self.t0_nanos { Duration::from_nanos(last_read - self.t0_nanos) } else { wall };
        let cpu = thread_cpu_time().zip(self.cpu).map_or(Duration::ZERO, |(b, a)| b.saturating_sub(a));
        // The probe submit of `start` is outside the window; the one taken here is the
        // window's last index plus one.
        let submits = crate::backend::submission_index().zip(self.submit_index).map(|(b, a)| (b - a - 1) as f64);
        let kernel_ms: BTreeMap<String, f64> = match self.launches.times.lock() {
            Ok(m) => m.iter().fold(BTreeMap::new(), |mut acc, (k, v)| {
                *acc.entry(short_name(k)).or_default() += v.as_secs_f64() * 1e3;
                acc
            }),
            Err(_) => BTreeMap::new(),
        };
        let kernels: BTreeMap<String, f64> = match self.launches.counts.lock() {
            Ok(m) => m.iter().map(|(k, v)| (short_name(k), *v as f64)).fold(BTreeMap::new(), |mut acc, (k, v)| {
                *acc.entry(k).or_default() += v;
                acc
            }),
            Err(_) => BTreeMap::new(),
        };
        Cost {
            dispatches: kernels.values().sum(),
            kernels,
            kernel_ms,
            uploads: (UPLOADS.load(Ordering::Relaxed) - self.uploads) as f64,
            upload_bytes: (UPLOAD_BYTES.load(Ordering::Relaxed) - self.upload_bytes) as f64,
            readbacks: (READBACKS.load(Ordering::Relaxed) - self.readbacks) as f64,
            readback_bytes: (READBACK_BYTES.load(Ordering::Relaxed) - self.readback_bytes) as f64,
            submits,
            host_cpu: cpu,
            enqueue,
            wall,
        }
    }
}

/// `a::b::kernel_name<F, G>` -> `kernel_name`.
fn short_name(full: &str) -> String {
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

/// CPU time consumed by the calling thread, where the OS tells it.
#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_are_shortened_to_the_function() {
        assert_eq!(short_name("kokichi::kernels::matvec::cube::matvec_chunks<f32, f16>"), "matvec_chunks");
        assert_eq!(short_name("plain"), "plain");
    }

    #[test]
    fn extrapolation_adds_per_layer_costs() {
        let base = Cost { dispatches: 10.0, submits: Some(2.0), ..Cost::default() };
        let layer = Cost { dispatches: 7.0, submits: Some(0.5), ..Cost::default() };
        let total = base.plus_times(&layer, 31.0);
        assert_eq!(total.dispatches, 227.0);
        assert_eq!(total.submits, Some(17.5));
        assert_eq!(total.minus(&base).dispatches, 217.0);
    }

    #[test]
    fn host_readbacks_and_uploads_are_counted() {
        let device = burn::prelude::Device::flex();
        let meter = Meter::start();
        let t = crate::backend::floats(vec![1.0, 2.0], [2], &device, burn::tensor::DType::F32);
        let v = crate::backend::read_floats(t).unwrap();
        let cost = meter.finish();
        assert_eq!(v, vec![1.0, 2.0]);
        // Other tests of this binary may upload at the same time: at least ours were counted.
        assert!(cost.uploads >= 1.0 && cost.readbacks >= 1.0, "{cost:?}");
        assert!(cost.upload_bytes >= 8.0);
    }
}
