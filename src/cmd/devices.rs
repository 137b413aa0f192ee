//! `kokichi devices`: the audio devices the daemon can open, with the format it would use, so
//! `input_device` / `output_device` can be set to one of them.

use std::fmt::Write;

use anyhow::{Result, bail};
use clap::Args;

use kokichi::daemon::local_audio::{self, DeviceInfo, Direction};

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// Print nothing; exit 0 when a default input and output device can be opened, 1 when not
    /// (scripts such as `make run` use it to decide whether to answer example files instead).
    #[arg(long)]
    check: bool,
}

pub fn devices(a: DevicesArgs) -> Result<()> {
    let list = local_audio::list_devices()?;
    if a.check {
        return match missing_direction(&list) {
            None => Ok(()),
            Some(dir) => bail!("no usable default {dir} device"),
        };
    }
    print!("{}", render(&list));
    Ok(())
}

/// The first direction without a default device whose format can be read.
fn missing_direction(devices: &[DeviceInfo]) -> Option<&'static str> {
    [(Direction::Input, "input"), (Direction::Output, "output")].into_iter().find_map(|(dir, name)| {
        let ok = devices.iter().any(|d| d.direction == dir && d.is_default && d.default_config.is_ok());
        (!ok).then_some(name)
    })
}

/// One section per direction; `*` marks the default, devices that cannot open say why.
fn render(devices: &[DeviceInfo]) -> String {
    let mut out = String::new();
    for (dir, title) in
        [(Direction::Input, "Input devices (input_device)"), (Direction::Output, "Output devices (output_device)")]
    {
        let _ = writeln!(out, "{title}:");
        let list: Vec<&DeviceInfo> = devices.iter().filter(|d| d.direction == dir).collect();
        if list.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for d in list {
            let mark = if d.is_default { '*' } else { ' ' };
            let format = match &d.default_config {
                Ok(f) => f.to_string(),
                Err(e) => format!("unavailable: {e}"),
            };
            let id = if d.id.is_empty() || d.id == d.name { String::new() } else { format!(" [{}]", d.id) };
            let _ = writeln!(out, "{mark} {}{id}\n      {format}", d.name);
        }
    }
    out.push_str("\n* = default. Set input_device / output_device in the config (or --input-device / --output-device) to a name or [id].\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kokichi::daemon::local_audio::DeviceFormat;

    #[test]
    fn lists_both_directions_and_marks_the_default() {
        let devices = [
            DeviceInfo {
                direction: Direction::Output,
                name: "USB Headset".into(),
                id: "hw:1,0".into(),
                is_default: true,
                default_config: Ok(DeviceFormat { sample_rate: 48000, channels: 2, sample_format: "i16".into() }),
            },
            DeviceInfo {
                direction: Direction::Output,
                name: "null".into(),
                id: "null".into(),
                is_default: false,
                default_config: Err("busy".into()),
            },
        ];
        assert_eq!(missing_direction(&devices), Some("input"));
        let text = render(&devices);
        assert!(text.contains("Input devices (input_device):\n  (none)"), "{text}");
        assert!(text.contains("* USB Headset [hw:1,0]\n      48000 Hz, 2 ch, i16"), "{text}");
        assert!(text.contains("  null\n      unavailable: busy"), "{text}");
    }
}
