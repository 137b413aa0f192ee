//! The `/api/grad` worker: gradients on a thread of their own at the lowest CPU priority
//! (nice 19), with an autodiff copy of the LM in f32 on the daemon's backend, loaded at the first
//! request. One request computes at a time and one more may wait ([`GradService::submit`]
//! refuses beyond), so live sessions on the inference thread keep their frame budget.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use crate::backend::{self, BackendKind, Precision};
use crate::error::{Error, Result};
use crate::lm::LmModel;
use crate::model_dir;
use crate::train::grad::{self as g, Target};

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 16 << 20;
/// Longest a request may wait and compute.
pub const TIME_BUDGET: Duration = Duration::from_secs(60);

/// A computation for the worker, and where its answer goes.
pub struct Job {
    pub latents: Vec<f32>,
    pub k: usize,
    pub codes: Vec<i64>,
    pub t: usize,
    pub target: Target,
    pub deadline: Instant,
    pub reply: tokio::sync::oneshot::Sender<std::result::Result<(f32, Vec<f32>), (StatusCode, String)>>,
}

/// The handle of the gradient worker.
#[derive(Clone)]
pub struct GradService {
    jobs: SyncSender<Job>,
}

impl GradService {
    /// Starts the worker thread; the model (`spec`, on `kind`) loads at its first request.
    pub fn start(spec: String, kind: BackendKind) -> Result<Self> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(1);
        std::thread::Builder::new()
            .name("kokichi-grad".into())
            .spawn(move || worker(spec, kind, rx))
            .map_err(|e| Error::Backend(format!("cannot start the gradient thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Queues `job`; `false` when one computes and one already waits.
    pub fn submit(&self, job: Job) -> std::result::Result<(), &'static str> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err("busy: one gradient at a time; retry shortly"),
            Err(TrySendError::Disconnected(_)) => Err("the gradient worker stopped"),
        }
    }
}

/// Lowers the calling thread's CPU priority to nice 19 (Linux; elsewhere nothing).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own id (gettid) changes nothing but its priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, 19) != 0 {
            tracing::warn!("gradient thread: cannot lower its priority");
        }
    }
}

fn worker(spec: String, kind: BackendKind, rx: mpsc::Receiver<Job>) {
    lower_priority();
    let mut lm: Option<LmModel> = None;
    for job in rx {
        if Instant::now() > job.deadline {
            let _ =
                job.reply.send(Err((StatusCode::SERVICE_UNAVAILABLE, "the time budget ran out in the queue".into())));
            continue;
        }
        if lm.is_none() {
            let t0 = Instant::now();
            match load(&spec, kind) {
                Ok(m) => {
                    tracing::info!(secs = t0.elapsed().as_secs_f64(), "gradient model loaded");
                    lm = Some(m);
                }
                Err(e) => {
                    let _ = job.reply.send(Err((StatusCode::INTERNAL_SERVER_ERROR, format!("loading the model: {e}"))));
                    continue;
                }
            }
        }
        let Some(model) = &lm else { continue };
        let result = g::loss_and_grad(model, &job.latents, job.k, &job.codes, job.t, &job.target).map_err(|e| {
            let status =
                if matches!(e, Error::Input(_)) { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
            (status, e.to_string())
        });
        let _ = job.reply.send(result);
    }
}

fn load(spec: &str, kind: BackendKind) -> Result<LmModel> {
    let files = model_dir::resolve(spec)?;
    let device = backend::device(kind, Precision::F32)?.autodiff();
    let lm = LmModel::load_as(&files.lm, files.lm_config.clone(), &device, Precision::F32)?;
    Ok(burn::module::Module::no_grad(lm))
}
