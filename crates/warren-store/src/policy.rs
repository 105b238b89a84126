//! The task-parsing policy `[image]` describes, checked once at start-up:
//! a setting that cannot work stops the service with its name, instead of
//! failing every task.

use warren_tasks::image::{Limits, PrefixTemplate, Rgb, SpecPolicy};

use crate::settings::ImageSettings;

/// An `[image]` setting that describes no thumbnailer that can work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image.{setting}: {reason}")]
pub struct SettingError {
    pub setting: &'static str,
    pub reason: String,
}

/// The policy `image.thumbnail` tasks are parsed with, from `[image]`.
pub fn policy(settings: &ImageSettings) -> Result<SpecPolicy, SettingError> {
    let setting = |setting, reason: String| SettingError { setting, reason };
    let output_prefix = PrefixTemplate::parse(&settings.output_prefix)
        .map_err(|reason| setting("output_prefix", reason))?;
    let default_background = Rgb::parse(&settings.default_background).ok_or_else(|| {
        setting(
            "default_background",
            format!(
                "{:?} is not a colour like #ffffff",
                settings.default_background
            ),
        )
    })?;
    if !(1..=100).contains(&settings.default_quality) {
        return Err(setting(
            "default_quality",
            format!("must be 1-100, not {}", settings.default_quality),
        ));
    }
    for (name, value) in [
        ("max_width", u64::from(settings.max_width)),
        ("max_height", u64::from(settings.max_height)),
        ("max_pixels", settings.max_pixels),
        ("max_alloc_bytes", settings.max_alloc_bytes),
        ("max_source_bytes", settings.max_source_bytes),
    ] {
        if value == 0 {
            return Err(setting(name, "must be greater than zero".to_owned()));
        }
    }
    if settings.store_timeout.is_zero() {
        return Err(setting(
            "store_timeout",
            "must be greater than zero".to_owned(),
        ));
    }
    Ok(SpecPolicy {
        limits: Limits {
            max_width: settings.max_width,
            max_height: settings.max_height,
            max_pixels: settings.max_pixels,
            max_alloc_bytes: settings.max_alloc_bytes,
        },
        max_inline_bytes: settings.max_inline_bytes,
        default_quality: settings.default_quality,
        default_background,
        output_prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_at_start_up() {
        let ok = ImageSettings::default();
        assert!(policy(&ok).is_ok());
        for (bad, setting) in [
            (
                ImageSettings {
                    output_prefix: "thumbs".into(),
                    ..ImageSettings::default()
                },
                "output_prefix",
            ),
            (
                ImageSettings {
                    default_background: "white".into(),
                    ..ImageSettings::default()
                },
                "default_background",
            ),
            (
                ImageSettings {
                    default_quality: 0,
                    ..ImageSettings::default()
                },
                "default_quality",
            ),
            (
                ImageSettings {
                    max_pixels: 0,
                    ..ImageSettings::default()
                },
                "max_pixels",
            ),
        ] {
            assert_eq!(
                policy(&bad).err().map(|e| e.setting),
                Some(setting),
                "{bad:?}"
            );
        }
    }
}
