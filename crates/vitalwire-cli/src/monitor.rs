//! A simulated patient monitor: heart rate, SpO2, blood pressure, an ECG-like waveform and
//! alarms, on three channels.

/// Channel of periodic numerics (text `HR=..;SpO2=..;NIBP=../..`).
pub const CH_NUMERICS: u8 = 1;
/// Channel of waveform blocks (big-endian i16 samples).
pub const CH_WAVEFORM: u8 = 2;
/// Channel of alarms (text).
pub const CH_ALARMS: u8 = 3;

/// Samples per waveform block.
pub const WAVEFORM_SAMPLES: usize = 64;

/// A deterministic pseudo-random simulator.
pub struct PatientMonitor {
    state: u32,
    hr: f32,
    spo2: f32,
    phase: f32,
}

impl PatientMonitor {
    pub fn new(seed: u32) -> Self {
        PatientMonitor { state: seed | 1, hr: 72.0, spo2: 98.0, phase: 0.0 }
    }

    fn rand(&mut self) -> f32 {
        // xorshift32
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        (self.state as f32 / u32::MAX as f32) - 0.5
    }

    /// The frames of one tick: numerics, a waveform block, and sometimes an alarm.
    pub fn tick(&mut self, tick: u32) -> Vec<(u8, Vec<u8>)> {
        self.hr = (self.hr + self.rand() * 4.0).clamp(45.0, 160.0);
        self.spo2 = (self.spo2 + self.rand()).clamp(85.0, 100.0);
        let sys = 118.0 + self.rand() * 10.0;
        let dia = 78.0 + self.rand() * 6.0;
        let mut out = vec![(
            CH_NUMERICS,
            format!("HR={:.0};SpO2={:.0};NIBP={:.0}/{:.0}", self.hr, self.spo2, sys, dia).into_bytes(),
        )];
        let mut wave = Vec::with_capacity(WAVEFORM_SAMPLES * 2);
        let step = self.hr / 60.0 / 250.0; // 250 Hz sampling
        for _ in 0..WAVEFORM_SAMPLES {
            self.phase = (self.phase + step) % 1.0;
            let sample = ecg(self.phase) + self.rand() * 0.02;
            wave.extend_from_slice(&((sample * 1000.0) as i16).to_be_bytes());
        }
        out.push((CH_WAVEFORM, wave));
        if self.hr > 100.0 || self.spo2 < 90.0 || tick % 25 == 24 {
            let text = if self.hr > 100.0 {
                format!("HIGH HR {:.0}", self.hr)
            } else if self.spo2 < 90.0 {
                format!("LOW SpO2 {:.0}", self.spo2)
            } else {
                "INFO lead check OK".to_string()
            };
            out.push((CH_ALARMS, text.into_bytes()));
        }
        out
    }
}

/// A rough PQRST shape over one beat, phase in [0, 1).
fn ecg(phase: f32) -> f32 {
    let g = |c: f32, w: f32, a: f32| a * (-((phase - c) / w).powi(2)).exp();
    g(0.2, 0.025, 0.15)
        + g(0.37, 0.008, -0.12)
        + g(0.4, 0.01, 1.0)
        + g(0.43, 0.008, -0.25)
        + g(0.7, 0.04, 0.3)
}

/// A one-line description of a received frame.
pub fn describe(channel: u8, payload: &[u8]) -> String {
    match channel {
        CH_NUMERICS => format!("numerics  {}", String::from_utf8_lossy(payload)),
        CH_WAVEFORM => {
            let samples: Vec<i16> =
                payload.chunks_exact(2).map(|c| i16::from_be_bytes([c[0], c[1]])).collect();
            let (min, max) = samples.iter().fold((i16::MAX, i16::MIN), |(a, b), &s| (a.min(s), b.max(s)));
            format!("waveform  {} samples, {min}..{max} uV", samples.len())
        }
        CH_ALARMS => format!("ALARM     {}", String::from_utf8_lossy(payload)),
        other => format!("channel {other}: {} bytes", payload.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_produce_numerics_and_waveform() {
        let mut m = PatientMonitor::new(7);
        let frames = m.tick(0);
        assert_eq!(frames[0].0, CH_NUMERICS);
        assert!(String::from_utf8(frames[0].1.clone()).unwrap().starts_with("HR="));
        assert_eq!(frames[1].1.len(), WAVEFORM_SAMPLES * 2);
        assert!(describe(CH_WAVEFORM, &frames[1].1).contains("64 samples"));
    }

    /// The help's "heart rate, SpO2, blood pressure, ECG-like waveform, alarms": every tick has
    /// all three numerics, and an alarm comes at least every 25 ticks whatever the seed.
    #[test]
    fn every_vital_is_sent_and_alarms_come_at_least_every_25_ticks() {
        for seed in [1, 7, 0x9E37_79B9, u32::MAX] {
            let mut m = PatientMonitor::new(seed);
            let mut since_alarm = 0;
            for tick in 0..200 {
                let frames = m.tick(tick);
                let numerics = String::from_utf8(frames[0].1.clone()).unwrap();
                let fields: Vec<&str> = numerics.split(';').map(|f| f.split('=').next().unwrap()).collect();
                assert_eq!(fields, ["HR", "SpO2", "NIBP"], "{numerics}");
                since_alarm += 1;
                if frames.iter().any(|(ch, p)| *ch == CH_ALARMS && !p.is_empty()) {
                    since_alarm = 0;
                }
                assert!(since_alarm < 25, "seed {seed}: no alarm for 25 ticks");
            }
        }
    }
}
