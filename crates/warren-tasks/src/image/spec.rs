//! The parsed `image.thumbnail` task ([`ThumbnailSpec`]) and what parsing
//! needs from the settings ([`SpecPolicy`]).

use std::collections::HashSet;
use std::fmt;

use base64::Engine;

use super::key::{PrefixTemplate, StoreKey};
use super::kinds::{INVALID_PAYLOAD, SOURCE_TOO_LARGE};
use super::wire::{Fit, OutputFormat, ThumbnailTask};
use crate::ParseError;

/// An sRGB colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub [u8; 3]);

impl Rgb {
    /// Parses `#rrggbb` or `#rgb`.
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.strip_prefix('#')?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let digit = |i: usize| u8::from_str_radix(hex.get(i..i + 1)?, 16).ok();
        let pair = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
        match hex.len() {
            3 => Some(Self([digit(0)? * 17, digit(1)? * 17, digit(2)? * 17])),
            6 => Some(Self([pair(0)?, pair(2)?, pair(4)?])),
            _ => None,
        }
    }
}

impl fmt::Display for Rgb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}

/// Size limits, shared by sources (checked on the header, before decoding)
/// and outputs (checked when the task is parsed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    pub max_alloc_bytes: u64,
}

impl Limits {
    /// Why `width` x `height` is over the limits, if it is.
    pub fn exceeded_by(&self, width: u32, height: u32) -> Option<String> {
        let pixels = u64::from(width) * u64::from(height);
        if width > self.max_width {
            Some(format!(
                "width {width} is over the limit of {}",
                self.max_width
            ))
        } else if height > self.max_height {
            Some(format!(
                "height {height} is over the limit of {}",
                self.max_height
            ))
        } else if pixels > self.max_pixels {
            Some(format!(
                "{width}x{height} is {pixels} pixels, over the limit of {}",
                self.max_pixels
            ))
        } else {
            None
        }
    }
}

/// What parsing a task needs from the settings.
#[derive(Debug, Clone)]
pub struct SpecPolicy {
    pub limits: Limits,
    pub max_inline_bytes: usize,
    pub default_quality: u8,
    pub default_background: Rgb,
    pub output_prefix: PrefixTemplate,
}

/// Where the source image comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// An object in the configured store.
    Key(StoreKey),
    /// The image itself, decoded from base64.
    Inline(Vec<u8>),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Key(k) => f.debug_tuple("Key").field(k).finish(),
            Source::Inline(bytes) => write!(f, "Inline({} bytes)", bytes.len()),
        }
    }
}

/// One output, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    width: u32,
    height: u32,
    fit: Fit,
    format: OutputFormat,
    quality: u8,
    key: StoreKey,
}

impl OutputSpec {
    /// An output written nowhere, for benchmarks and tests of the pipeline.
    pub fn new(
        width: u32,
        height: u32,
        fit: Fit,
        format: OutputFormat,
        quality: u8,
        key: StoreKey,
    ) -> Result<Self, ParseError> {
        check_output(width, height, format, Some(quality), None)?;
        Ok(Self {
            width,
            height,
            fit,
            format,
            quality,
            key,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }
    pub fn height(&self) -> u32 {
        self.height
    }
    pub fn fit(&self) -> Fit {
        self.fit
    }
    pub fn format(&self) -> OutputFormat {
        self.format
    }
    pub fn quality(&self) -> u8 {
        self.quality
    }
    pub fn key(&self) -> &StoreKey {
        &self.key
    }
}

/// A parsed `image.thumbnail` task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbnailSpec {
    source: Source,
    outputs: Vec<OutputSpec>,
    prefix: StoreKey,
    background: Rgb,
}

/// Most outputs one task may ask for.
pub const MAX_OUTPUTS: usize = 16;

impl ThumbnailSpec {
    /// Parses the wire task of task `task_id`.
    pub fn parse(
        task: ThumbnailTask,
        task_id: &str,
        policy: &SpecPolicy,
    ) -> Result<Self, ParseError> {
        let source = match (task.source.key, task.source.base64) {
            (Some(key), None) => Source::Key(StoreKey::parse("source.key", &key)?),
            (None, Some(data)) => Source::Inline(decode_inline(&data, policy.max_inline_bytes)?),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "source",
                    "source has both key and base64; give one",
                ));
            }
            (None, None) => return Err(invalid("source", "source needs a key or base64 data")),
        };
        let prefix = match task.destination_prefix {
            Some(raw) => StoreKey::parse("destination_prefix", &raw)?,
            None => policy.output_prefix.render(task_id)?,
        };
        let background = match task.background {
            Some(raw) => Rgb::parse(&raw).ok_or_else(|| {
                invalid(
                    "background",
                    format!("background {raw:?} is not a colour like #ffffff"),
                )
            })?,
            None => policy.default_background,
        };
        if task.outputs.is_empty() {
            return Err(invalid("outputs", "outputs is empty; ask for at least one"));
        }
        if task.outputs.len() > MAX_OUTPUTS {
            return Err(invalid(
                "outputs",
                format!(
                    "{} outputs requested; at most {MAX_OUTPUTS} per task",
                    task.outputs.len()
                ),
            ));
        }
        let mut outputs = Vec::with_capacity(task.outputs.len());
        let mut keys = HashSet::new();
        for (i, o) in task.outputs.into_iter().enumerate() {
            let field = format!("outputs[{i}]");
            check_output(o.width, o.height, o.format, o.quality, Some(&policy.limits))
                .map_err(|e| invalid(&field, format!("{field}: {}", e.message)))?;
            let name = match o.name {
                Some(name) => name,
                None => format!(
                    "{}x{}-{}.{}",
                    o.width,
                    o.height,
                    o.fit.as_str(),
                    o.format.extension()
                ),
            };
            let key = prefix.join(&format!("outputs[{i}].name"), &name)?;
            if !keys.insert(key.clone()) {
                return Err(invalid(
                    &field,
                    format!("{field} would write {key}, as an earlier output does; give it a name"),
                ));
            }
            outputs.push(OutputSpec {
                width: o.width,
                height: o.height,
                fit: o.fit,
                format: o.format,
                quality: o.quality.unwrap_or(policy.default_quality),
                key,
            });
        }
        Ok(Self {
            source,
            outputs,
            prefix,
            background,
        })
    }

    /// A spec assembled directly, for benchmarks and pipeline tests.
    pub fn from_parts(
        source: Source,
        outputs: Vec<OutputSpec>,
        prefix: StoreKey,
        background: Rgb,
    ) -> Self {
        Self {
            source,
            outputs,
            prefix,
            background,
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }
    pub fn outputs(&self) -> &[OutputSpec] {
        &self.outputs
    }
    pub fn prefix(&self) -> &StoreKey {
        &self.prefix
    }
    pub fn background(&self) -> Rgb {
        self.background
    }
}

fn invalid(field: &str, message: impl fmt::Display) -> ParseError {
    ParseError::new(INVALID_PAYLOAD, field, message)
}

fn check_output(
    width: u32,
    height: u32,
    format: OutputFormat,
    quality: Option<u8>,
    limits: Option<&Limits>,
) -> Result<(), ParseError> {
    if width == 0 || height == 0 {
        return Err(invalid(
            "",
            format!("width and height must be at least 1 (got {width}x{height})"),
        ));
    }
    if let Some(why) = limits.and_then(|l| l.exceeded_by(width, height)) {
        return Err(invalid("", format!("the output size is refused: {why}")));
    }
    let max = format.max_side();
    if width > max || height > max {
        return Err(invalid(
            "",
            format!(
                "{} holds at most {max} pixels a side (got {width}x{height})",
                format.as_str()
            ),
        ));
    }
    if let Some(q) = quality
        && !(1..=100).contains(&q)
    {
        return Err(invalid("", format!("quality must be 1-100 (got {q})")));
    }
    Ok(())
}

/// Decodes inline base64, refusing more than `max` decoded bytes before
/// decoding anything.
fn decode_inline(data: &str, max: usize) -> Result<Vec<u8>, ParseError> {
    let engine = base64::engine::general_purpose::STANDARD;
    let data = data.trim();
    // Well-formed base64 of n bytes is 4 * ceil(n / 3) characters, so this
    // refuses an oversized source before decoding (allocating) it.
    let at_least = (data.len() / 4 * 3).saturating_sub(2);
    if at_least > max {
        return Err(ParseError::new(
            SOURCE_TOO_LARGE,
            "source.base64",
            format!(
                "source.base64 is at least {at_least} bytes decoded, over image.max_inline_bytes ({max}); put the image in the store and send its key"
            ),
        ));
    }
    let bytes = engine.decode(data).map_err(|e| {
        invalid(
            "source.base64",
            format!("source.base64 is not valid base64: {e}"),
        )
    })?;
    if bytes.len() > max {
        return Err(ParseError::new(
            SOURCE_TOO_LARGE,
            "source.base64",
            format!(
                "source.base64 is {} bytes decoded, over image.max_inline_bytes ({max})",
                bytes.len()
            ),
        ));
    }
    if bytes.is_empty() {
        return Err(invalid("source.base64", "source.base64 is empty"));
    }
    Ok(bytes)
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::image::kinds::INVALID_KEY;
    use serde_json::{Value, json};

    fn policy() -> SpecPolicy {
        SpecPolicy {
            limits: Limits {
                max_width: 20_000,
                max_height: 20_000,
                max_pixels: 50_000_000,
                max_alloc_bytes: 1 << 30,
            },
            max_inline_bytes: 16,
            default_quality: 85,
            default_background: Rgb([255, 255, 255]),
            output_prefix: PrefixTemplate::parse("thumbnails/{task_id}").unwrap(),
        }
    }

    fn parse(body: Value) -> Result<ThumbnailSpec, ParseError> {
        let task: ThumbnailTask = serde_json::from_value(body).unwrap();
        ThumbnailSpec::parse(task, "task-1", &policy())
    }

    #[test]
    fn a_full_task_parses_with_defaults_filled_in() {
        let spec = parse(json!({
            "source": {"key": "uploads/cat.jpg"},
            "outputs": [
                {"width": 200, "height": 100},
                {"width": 64, "height": 64, "fit": "cover", "format": "webp", "quality": 70, "name": "square.webp"},
            ],
        }))
        .unwrap();
        assert_eq!(
            spec.source(),
            &Source::Key(StoreKey::parse("k", "uploads/cat.jpg").unwrap())
        );
        assert_eq!(spec.prefix().as_str(), "thumbnails/task-1");
        assert_eq!(spec.background(), Rgb([255, 255, 255]));
        let [a, b] = spec.outputs() else {
            panic!("two outputs")
        };
        assert_eq!(a.key().as_str(), "thumbnails/task-1/200x100-contain.jpg");
        assert_eq!(
            (a.fit(), a.format(), a.quality()),
            (Fit::Contain, OutputFormat::Jpeg, 85)
        );
        assert_eq!(b.key().as_str(), "thumbnails/task-1/square.webp");
        assert_eq!(
            (b.fit(), b.format(), b.quality()),
            (Fit::Cover, OutputFormat::Webp, 70)
        );
    }

    #[test]
    fn inline_sources_are_decoded_and_capped() {
        let spec = parse(json!({
            "source": {"base64": "aGVsbG8="},
            "outputs": [{"width": 1, "height": 1}],
            "destination_prefix": "out/x",
            "background": "#0f0",
        }))
        .unwrap();
        assert_eq!(spec.source(), &Source::Inline(b"hello".to_vec()));
        assert_eq!(spec.prefix().as_str(), "out/x");
        assert_eq!(spec.background(), Rgb([0, 255, 0]));
        let e = parse(json!({
            "source": {"base64": "aGVsbG8gd29ybGQsIHRoaXMgaXMgdG9vIGxvbmc="},
            "outputs": [{"width": 1, "height": 1}],
        }))
        .unwrap_err();
        assert_eq!(
            (e.kind, e.field.as_str()),
            (SOURCE_TOO_LARGE, "source.base64")
        );
        let e = parse(json!({"source": {"base64": "!!!"}, "outputs": [{"width": 1, "height": 1}]}))
            .unwrap_err();
        assert_eq!(e.kind, INVALID_PAYLOAD);
    }

    #[test]
    fn bad_tasks_name_the_field_the_kind_and_the_reason() {
        let one = json!([{"width": 1, "height": 1}]);
        let cases = [
            (
                json!({"source": {}, "outputs": one}),
                INVALID_PAYLOAD,
                "source",
                "key or base64",
            ),
            (
                json!({"source": {"key": "a", "base64": "aGk="}, "outputs": one}),
                INVALID_PAYLOAD,
                "source",
                "both",
            ),
            (
                json!({"source": {"key": "a"}, "outputs": []}),
                INVALID_PAYLOAD,
                "outputs",
                "at least one",
            ),
            (
                json!({"source": {"key": "a"}, "outputs": [{"width": 0, "height": 1}]}),
                INVALID_PAYLOAD,
                "outputs[0]",
                "at least 1",
            ),
            (
                json!({"source": {"key": "a"}, "outputs": [{"width": 25000, "height": 1}]}),
                INVALID_PAYLOAD,
                "outputs[0]",
                "limit",
            ),
            (
                json!({"source": {"key": "a"}, "outputs": [{"width": 9000, "height": 9000}]}),
                INVALID_PAYLOAD,
                "outputs[0]",
                "pixels",
            ),
            (
                json!({"source": {"key": "a"}, "outputs": [{"width": 17000, "height": 10, "format": "webp"}]}),
                INVALID_PAYLOAD,
                "outputs[0]",
                "16383",
            ),
            (
                json!({"source": {"key": "a"}, "outputs": [{"width": 1, "height": 1, "quality": 0}]}),
                INVALID_PAYLOAD,
                "outputs[0]",
                "1-100",
            ),
            (
                json!({"source": {"key": "a"}, "outputs": [{"width": 1, "height": 1}, {"width": 1, "height": 1}]}),
                INVALID_PAYLOAD,
                "outputs[1]",
                "earlier output",
            ),
            (
                json!({"source": {"key": "a"}, "outputs": one, "background": "white"}),
                INVALID_PAYLOAD,
                "background",
                "colour",
            ),
            (
                json!({"source": {"key": "../a"}, "outputs": one}),
                INVALID_KEY,
                "source.key",
                "..",
            ),
            (
                json!({"source": {"key": "a"}, "outputs": one, "destination_prefix": "/tmp/x"}),
                INVALID_KEY,
                "destination_prefix",
                "absolute",
            ),
            (
                json!({"source": {"key": "a"}, "outputs": [{"width": 1, "height": 1, "name": "../x.jpg"}]}),
                INVALID_KEY,
                "outputs[0].name",
                "single name",
            ),
        ];
        for (body, kind, field, needle) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(
                (e.kind, e.field.as_str()),
                (kind, field),
                "{body}: {}",
                e.message
            );
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }

    #[test]
    fn colours_parse_in_both_forms() {
        assert_eq!(Rgb::parse("#ffffff"), Some(Rgb([255, 255, 255])));
        assert_eq!(Rgb::parse("#1a2B3c"), Some(Rgb([0x1a, 0x2b, 0x3c])));
        assert_eq!(Rgb::parse("#f80"), Some(Rgb([255, 136, 0])));
        for bad in ["ffffff", "#ffff", "#gggggg", "#ffffff0", "#+1+2+3"] {
            assert_eq!(Rgb::parse(bad), None, "{bad}");
        }
        assert_eq!(Rgb([1, 2, 255]).to_string(), "#0102ff");
    }
}
