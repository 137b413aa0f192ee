//! `--backend auto`: software rasterizers are told from GPUs by type and name, the choice on
//! this machine is consistent with its adapter, and the command line says what it picked in
//! one line, with the Vulkan loader's start-up chatter kept off the terminal.

mod common;

use std::process::Command;

use burn::tensor::wgpu::wgpu;
use common::fixture;
use kokichi::backend::{self, BackendKind};

fn adapter(name: &str, device_type: wgpu::DeviceType) -> wgpu::AdapterInfo {
    wgpu::AdapterInfo {
        name: name.to_string(),
        vendor: 0,
        device: 0,
        device_type,
        device_pci_bus_id: String::new(),
        driver: String::new(),
        driver_info: String::new(),
        backend: wgpu::Backend::Vulkan,
        subgroup_min_size: 8,
        subgroup_max_size: 32,
        transient_saves_memory: None,
        limit_bucket: None,
    }
}

#[test]
fn software_adapters_are_told_from_gpus() {
    use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu, Other, VirtualGpu};
    let software = [
        ("llvmpipe (LLVM 19.1.7, 256 bits)", Cpu),
        ("llvmpipe (LLVM 15.0.6, 256 bits)", Other),
        ("Lavapipe", Other),
        ("SwiftShader Device (Subzero)", Other),
        ("Microsoft Basic Render Driver", Other),
        ("anything a driver calls a CPU", Cpu),
    ];
    for (name, kind) in software {
        assert!(backend::is_software(&adapter(name, kind)), "{name} ({kind:?}) is software");
    }
    let hardware = [
        ("NVIDIA H100 80GB HBM3", DiscreteGpu),
        ("AMD Radeon 780M (RADV PHOENIX)", IntegratedGpu),
        ("Apple M2", IntegratedGpu),
        ("Intel(R) Arc(tm) A770 Graphics (DG2)", DiscreteGpu),
        ("Virtio-GPU Venus (NVIDIA L4)", VirtualGpu),
    ];
    for (name, kind) in hardware {
        assert!(!backend::is_software(&adapter(name, kind)), "{name} ({kind:?}) is a GPU");
    }
}

#[test]
fn explicit_backends_stand_for_themselves() {
    assert_eq!(backend::resolve(BackendKind::Cpu).0, BackendKind::Cpu);
    assert_eq!(backend::resolve(BackendKind::Wgpu).0, BackendKind::Wgpu);
}

#[test]
fn auto_never_stays_auto_and_says_why() {
    let (chosen, why) = backend::resolve(BackendKind::Auto);
    assert_ne!(chosen, BackendKind::Auto);
    assert!(!why.is_empty());
    match chosen {
        // A GPU was found: the reason names it as one.
        BackendKind::Wgpu => assert!(why.contains("GPU"), "{why}"),
        // No adapter, or a software one (this machine's lavapipe).
        _ => assert!(why.contains("software") || why.contains("no usable wgpu adapter"), "{why}"),
    }
}

#[test]
fn the_command_line_reports_its_choice_in_one_line() {
    let dir = common::scratch("backend-auto", "");
    let wav = dir.join("tone.wav");
    let samples: Vec<f32> = (0..4800).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
    kokichi::audio::write_wav_f32(&wav, &samples, 24000).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kokichi"))
        .args(["--backend", "auto", "encode", "--mimi"])
        .arg(fixture("mimi_a/mimi.safetensors"))
        .arg("--config")
        .arg(fixture("mimi_a/config.json"))
        .args(["--codebooks", "8", "--input"])
        .arg(&wav)
        .arg("--output")
        .arg(dir.join("codes.safetensors"))
        .env("RUST_LOG", "info")
        // The Vulkan loader complains about this one on every start when it is unset.
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let choices: Vec<&str> =
        stderr.lines().filter(|l| l.contains("backend cpu:") || l.contains("backend wgpu:")).collect();
    assert_eq!(choices.len(), 1, "one line saying which backend and why:\n{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "loader chatter reached the terminal:\n{stderr}");
}
