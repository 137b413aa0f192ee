//! Finding a device by name and opening it in its native format, with a fresh ring between its
//! callback and the session. Everything here runs on the audio thread ([`super::thread`]).

use std::sync::Arc;

use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{ErrorKind, FromSample, SampleFormat, SizedSample, StreamConfig};
use ringbuf::HeapRb;
use ringbuf::traits::Split;

use super::bridge::{CaptureEnd, PlaybackEnd};
use super::convert::{CaptureWriter, PlaybackReader};
use crate::daemon::metrics::Metrics;

/// Capture or playback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Input,
    Output,
}

impl Direction {
    /// The config setting naming this device.
    pub fn setting(self) -> &'static str {
        match self {
            Direction::Input => "input_device",
            Direction::Output => "output_device",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Direction::Input => "microphone",
            Direction::Output => "speaker",
        }
    }
}

/// Why a stream could not be opened.
pub enum OpenError {
    /// No such hardware (no sound card, default device unavailable).
    Absent(String),
    /// A device was named in the config but is not there.
    NotFound(String),
    /// The device exists but refused.
    Failed(String),
}

/// The device's display name, falling back to its id.
pub fn device_name(device: &cpal::Device) -> String {
    match device.description() {
        Ok(d) => d.name().to_string(),
        Err(_) => device_id(device),
    }
}

pub fn device_id(device: &cpal::Device) -> String {
    device.id().map(|id| id.id().to_string()).unwrap_or_default()
}

/// Picks `wanted` among `(name, id)` pairs: an exact id or name, then a case-insensitive one,
/// then the only name containing it.
pub fn pick(devices: &[(String, String)], wanted: &str) -> Option<usize> {
    let lower = wanted.to_lowercase();
    let exact = devices.iter().position(|(n, id)| id == wanted || n == wanted);
    let folded = || devices.iter().position(|(n, id)| n.to_lowercase() == lower || id.to_lowercase() == lower);
    let partial = || {
        let mut hits = devices.iter().enumerate().filter(|(_, (n, _))| n.to_lowercase().contains(&lower));
        match (hits.next(), hits.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    };
    exact.or_else(folded).or_else(partial)
}

fn find(host: &cpal::Host, dir: Direction, wanted: Option<&str>) -> std::result::Result<cpal::Device, OpenError> {
    let Some(wanted) = wanted else {
        let device = match dir {
            Direction::Input => host.default_input_device(),
            Direction::Output => host.default_output_device(),
        };
        return device.ok_or_else(|| OpenError::Absent(format!("no default {}", dir.noun())));
    };
    let listed = match dir {
        Direction::Input => host.input_devices().map(|d| d.collect::<Vec<_>>()),
        Direction::Output => host.output_devices().map(|d| d.collect::<Vec<_>>()),
    };
    let mut devices = listed.map_err(|e| OpenError::Absent(format!("cannot list {}s: {e}", dir.noun())))?;
    let names: Vec<(String, String)> = devices.iter().map(|d| (device_name(d), device_id(d))).collect();
    match pick(&names, wanted) {
        Some(i) => Ok(devices.swap_remove(i)),
        None => {
            let known: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
            Err(OpenError::NotFound(format!(
                "no {} named `{wanted}` (found: {}); `kokichi devices` lists them",
                dir.noun(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )))
        }
    }
}

fn build_input<T>(
    device: &cpal::Device,
    config: StreamConfig,
    mut w: CaptureWriter,
    err: impl FnMut(cpal::Error) + Send + 'static,
) -> std::result::Result<cpal::Stream, cpal::Error>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    device.build_input_stream(config, move |data: &[T], _: &cpal::InputCallbackInfo| w.write(data), err, None)
}

fn build_output<T>(
    device: &cpal::Device,
    config: StreamConfig,
    mut r: PlaybackReader,
    err: impl FnMut(cpal::Error) + Send + 'static,
) -> std::result::Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + FromSample<f32>,
{
    device.build_output_stream(config, move |data: &mut [T], _: &cpal::OutputCallbackInfo| r.read(data), err, None)
}

/// Dispatches on the device's native sample format.
macro_rules! by_format {
    ($format:expr, $build:ident, $($arg:expr),*) => {
        match $format {
            SampleFormat::F32 => $build::<f32>($($arg),*),
            SampleFormat::I16 => $build::<i16>($($arg),*),
            SampleFormat::U16 => $build::<u16>($($arg),*),
            SampleFormat::I32 => $build::<i32>($($arg),*),
            SampleFormat::I24 => $build::<cpal::I24>($($arg),*),
            SampleFormat::U8 => $build::<u8>($($arg),*),
            SampleFormat::I8 => $build::<i8>($($arg),*),
            SampleFormat::U32 => $build::<u32>($($arg),*),
            SampleFormat::F64 => $build::<f64>($($arg),*),
            other => Err(cpal::Error::with_message(ErrorKind::UnsupportedConfig, format!("sample format {other} is not supported"))),
        }
    };
}

/// The session's end of an opened stream's ring.
pub enum End {
    Capture(CaptureEnd),
    Playback(PlaybackEnd),
}

/// A playing stream.
pub struct Opened {
    pub stream: cpal::Stream,
    pub name: String,
    /// Name and format, for the log and `/api/status`.
    pub desc: String,
    pub end: End,
}

/// Opens `wanted` (else the default device) for `dir` in its default format. `frame` is the
/// model's frame at `model_rate`, which sizes the rings: capture holds 0.5 s, playback up to
/// 4 frames and starts once 1.5 frames are queued.
pub fn open(
    host: &cpal::Host,
    dir: Direction,
    wanted: Option<&str>,
    (model_rate, frame): (u32, usize),
    metrics: &Arc<Metrics>,
    on_error: impl FnMut(cpal::Error) + Send + 'static,
) -> std::result::Result<Opened, OpenError> {
    let device = find(host, dir, wanted)?;
    let name = device_name(&device);
    let failed = |e: cpal::Error| match e.kind() {
        ErrorKind::DeviceNotAvailable | ErrorKind::HostUnavailable => {
            OpenError::Absent(format!("{} `{name}`: {e}", dir.noun()))
        }
        _ => OpenError::Failed(format!("{} `{name}`: {e}", dir.noun())),
    };
    let supported = match dir {
        Direction::Input => device.default_input_config(),
        Direction::Output => device.default_output_config(),
    }
    .map_err(failed)?;
    let (rate, channels, format) =
        (supported.sample_rate(), usize::from(supported.channels()), supported.sample_format());
    let config = supported.config();
    // One model frame at the device rate.
    let frame = (frame as u64 * u64::from(rate)).div_ceil(u64::from(model_rate.max(1))) as usize;
    let (stream, end) = match dir {
        Direction::Input => {
            let (prod, cons) = HeapRb::<f32>::new((rate as usize / 2).max(4 * frame)).split();
            let w = CaptureWriter::new(prod, channels, metrics.clone());
            let stream = by_format!(format, build_input, &device, config, w, on_error).map_err(failed)?;
            (stream, End::Capture(CaptureEnd { cons, rate }))
        }
        Direction::Output => {
            let (prod, cons) = HeapRb::<f32>::new(4 * frame).split();
            let r = PlaybackReader::new(cons, channels, frame * 3 / 2, metrics.clone());
            let stream = by_format!(format, build_output, &device, config, r, on_error).map_err(failed)?;
            (stream, End::Playback(PlaybackEnd { prod, rate }))
        }
    };
    stream.play().map_err(failed)?;
    let desc = format!("{} `{name}` ({rate} Hz, {channels} ch, {format})", dir.noun());
    Ok(Opened { stream, name, desc, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_picked_by_id_name_or_unique_part() {
        let list: Vec<(String, String)> =
            [("HD Audio Analog", "hw:0,0"), ("USB Headset", "hw:1,0"), ("USB Mic", "hw:2,0")]
                .iter()
                .map(|(n, i)| (n.to_string(), i.to_string()))
                .collect();
        assert_eq!(pick(&list, "hw:1,0"), Some(1));
        assert_eq!(pick(&list, "USB Mic"), Some(2));
        assert_eq!(pick(&list, "usb headset"), Some(1));
        assert_eq!(pick(&list, "HW:2,0"), Some(2));
        assert_eq!(pick(&list, "analog"), Some(0));
        assert_eq!(pick(&list, "usb"), None, "ambiguous");
        assert_eq!(pick(&list, "bluetooth"), None);
    }
}
