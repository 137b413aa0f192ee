//! Local microphone and speaker (placeholder until the cpal implementation lands).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::config::DaemonConfig;
use super::metrics::Metrics;
use super::runtime::Runtime;
use crate::error::Result;

/// Keeps the local audio streams alive; dropping it stops them.
pub struct LocalAudio {
    description: String,
}

impl LocalAudio {
    pub fn describe(&self) -> String {
        self.description.clone()
    }
}

/// Opens the microphone and speaker and adds the local session; `None` without devices.
pub fn start(_config: &DaemonConfig, _runtime: &Runtime, _metrics: Arc<Metrics>, _talk: Arc<AtomicBool>) -> Result<Option<LocalAudio>> {
    tracing::info!("no local audio device: serving WebSocket clients only");
    Ok(None)
}
