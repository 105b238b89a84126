//! The `image.thumbnail` body as producers publish it.

use serde::{Deserialize, Serialize};
use warren_core::Task;

/// The `image.thumbnail` body, as producers send it. Unknown fields are
/// refused at every level.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "source": {"key": "uploads/cat.jpg"},
    "outputs": [
        {"width": 256, "height": 256},
        {"width": 64, "height": 64, "fit": "cover", "format": "webp", "quality": 70, "name": "square.webp"}
    ]
})))]
#[serde(deny_unknown_fields)]
pub struct ThumbnailTask {
    pub source: SourceWire,
    /// 1 to 16 outputs.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 16))]
    pub outputs: Vec<OutputWire>,
    /// Where the outputs go; default `image.output_prefix` with the task id
    /// (`thumbnails/{task_id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_prefix: Option<String>,
    /// `#rrggbb` behind transparent pixels in outputs without alpha (JPEG);
    /// default `image.default_background`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<String>,
}

impl Task for ThumbnailTask {
    const TYPE: &'static str = "image.thumbnail";
    /// Consumed from the contract's queue, bound as the contract says.
    const OPTIONS: warren_core::TaskOptions = warren_core::TaskOptions::new()
        .queue(super::QUEUE.stem)
        .bindings(super::QUEUE.binding_keys);
}

/// Exactly one of `key` (an object in the image store) and `base64` (the
/// image itself, at most `image.max_inline_bytes`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ThumbnailSource))]
#[serde(deny_unknown_fields)]
pub struct SourceWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

/// One thumbnail to write.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ThumbnailOutput))]
#[serde(deny_unknown_fields)]
pub struct OutputWire {
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub width: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub height: u32,
    #[serde(default)]
    pub fit: Fit,
    #[serde(default)]
    pub format: OutputFormat,
    /// 1-100, JPEG and WebP only; default `image.default_quality`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub quality: Option<u8>,
    /// The object's name under the prefix; default
    /// `{width}x{height}-{fit}.{ext}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// How the image is fitted into `width` x `height`; default `contain`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// The whole image, aspect ratio kept, as large as fits in the box: one
    /// side equals the box, the other is at most the box (no padding).
    #[default]
    Contain,
    /// Exactly the box, aspect ratio kept, the overflow cropped evenly
    /// from both sides.
    Cover,
    /// Exactly the box, stretched.
    Fill,
}

impl Fit {
    pub fn as_str(self) -> &'static str {
        match self {
            Fit::Contain => "contain",
            Fit::Cover => "cover",
            Fit::Fill => "fill",
        }
    }
}

/// The encoding of an output; default `jpeg`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Jpeg,
    Png,
    Webp,
}

impl OutputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
            OutputFormat::Webp => "image/webp",
        }
    }

    /// Whether the format keeps an alpha channel.
    pub fn has_alpha(self) -> bool {
        !matches!(self, OutputFormat::Jpeg)
    }

    /// Largest width or height the format can hold.
    pub fn max_side(self) -> u32 {
        match self {
            OutputFormat::Jpeg => 65_535,
            OutputFormat::Png => u32::MAX,
            OutputFormat::Webp => 16_383,
        }
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_rejected_by_the_wire_types() {
        let r: Result<ThumbnailTask, _> = serde_json::from_value(json!({
            "source": {"key": "a", "url": "http://x"},
            "outputs": [{"width": 1, "height": 1}],
        }));
        assert!(r.unwrap_err().to_string().starts_with("unknown field"));
        let r: Result<ThumbnailTask, _> = serde_json::from_value(json!({
            "source": {"key": "a"},
            "outputs": [{"width": 1, "height": 1, "fit": "stretch"}],
        }));
        assert!(r.is_err());
    }

    #[test]
    fn a_task_a_producer_serializes_reads_back_the_same() {
        let task = ThumbnailTask {
            source: SourceWire {
                key: Some("uploads/a.png".into()),
                base64: None,
            },
            outputs: vec![OutputWire {
                width: 1,
                height: 2,
                fit: Fit::Cover,
                format: OutputFormat::Webp,
                quality: Some(50),
                name: Some("x.webp".into()),
            }],
            destination_prefix: Some("out/1".into()),
            background: None,
        };
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["outputs"][0]["fit"], "cover");
        assert!(json.get("background").is_none());
        assert_eq!(serde_json::from_value::<ThumbnailTask>(json).unwrap(), task);
    }
}
