//! Levels: RMS, dBFS, the API's 0–100 volume, and RFC 6464's −dBov.

/// Root mean square of `samples` (0 for none).
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt()
}

/// Level in dB relative to a full-scale square wave (RMS 1.0), floored at −127.
pub fn dbfs(rms: f32) -> f32 {
    if rms <= 1e-7 {
        -127.0
    } else {
        (20.0 * rms.log10()).clamp(-127.0, 0.0)
    }
}

/// The quietest level the 0–100 volume shows above 0.
const VOLUME_FLOOR_DB: f32 = -60.0;

/// The calling API's volume: −60 dBFS and below is 0, 0 dBFS is 100, linear
/// in dB between.
pub fn volume(samples: &[f32]) -> u8 {
    let db = dbfs(rms(samples));
    (((db - VOLUME_FLOOR_DB) / -VOLUME_FLOOR_DB) * 100.0)
        .clamp(0.0, 100.0)
        .round() as u8
}

/// The level for the datagram header: −dBov, 0 (loudest) to 127 (silence).
pub fn level_dbov(samples: &[f32]) -> u8 {
    (-dbfs(rms(samples))).round().clamp(0.0, 127.0) as u8
}

/// Whether a frame holds voice, by level (a simple gate: −50 dBFS).
pub fn voice_activity(samples: &[f32]) -> bool {
    dbfs(rms(samples)) > -50.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_as_documented() {
        assert_eq!(volume(&[0.0; 960]), 0);
        assert_eq!(volume(&[1.0; 960]), 100);
        assert_eq!(volume(&[0.1; 960]), 67, "-20 dBFS");
        assert_eq!(level_dbov(&[0.1; 960]), 20);
        assert_eq!(level_dbov(&[0.0; 960]), 127);
        assert!(voice_activity(&[0.05; 960]));
        assert!(!voice_activity(&[0.001; 960]));
        assert_eq!(volume(&[]), 0);
    }
}
