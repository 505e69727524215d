//! A conversation rendered to a prompt with the model's chat template, as transformers'
//! `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=…)` renders
//! it.
//!
//! The template is Jinja, from `tokenizer_config.json` (`chat_template`) or GGUF
//! (`tokenizer.chat_template`). minijinja renders it configured as transformers' sandboxed
//! jinja2 environment:
//! - `trim_blocks` and `lstrip_blocks` on, the final newline dropped, no autoescape;
//! - the context: `messages` (`[{role, content}]`, in that key order),
//!   `add_generation_prompt`, `tools = none`, `documents = none`, and `bos_token` /
//!   `eos_token` when the tokenizer names them;
//! - `raise_exception(msg)` ends the render with our error ([`Error::InvalidArgument`],
//!   naming the template's source and the message); `{% break %}`, `{% continue %}` and
//!   `namespace()` work;
//! - `tojson` is transformers' (`json.dumps(x, ensure_ascii=False, indent=None,
//!   separators=None, sort_keys=False)`: no HTML escaping, Python's spacing and float
//!   spelling, dict keys in insertion order), not Jinja's;
//! - Python's methods on strings, dicts and lists (`.strip()`, `.startswith()`, `.items()`,
//!   `.get()`, …) come from minijinja-contrib's `pycompat`;
//! - booleans, `none` and floats print as Python prints them (`True`, `None`, `1e-05`) in
//!   `{{ … }}` and through the `string` filter. The `~` operator and lists or dicts printed
//!   whole keep minijinja's spelling (`true`, `[1, "a"]`): no template of the LLaMA,
//!   Mistral or SmolLM families prints them.
//!
//! Left out on purpose: `strftime_now` (a prompt does not depend on the clock; templates
//! that ask `strftime_now is defined` take their fixed date), the `{% generation %}` tag
//! (assistant-token masks, a training feature; such a template does not parse), special
//! tokens other than BOS/EOS (`unk_token`, `pad_token`: the tokenizer does not keep them),
//! and extra template keyword arguments.
//!
//! A template comes from a model file, so it is bounded: minijinja's fuel
//! ([`TEMPLATE_FUEL`]) limits the instructions a render runs and the bytes it creates, its
//! recursion limit the nesting, and `tojson` refuses nesting beyond [`MAX_JSON_DEPTH`] (a
//! namespace holding itself), indents longer than [`MAX_JSON_INDENT`] and output beyond
//! [`MAX_JSON_BYTES`].

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind, Output, State};

use crate::io::Tokenizer;
use crate::{Error, Result};

/// The fuel of one render (see [`minijinja::Environment::set_fuel`]): about this many
/// instructions, or 64 times as many bytes created (64 MiB). Real templates spend a few
/// dozen per message plus about one per 64 bytes of text written or concatenated: a
/// conversation of 2,000 messages of 1 kB renders with LLaMA-3.1's or Mistral's template
/// (tested).
pub const TEMPLATE_FUEL: u64 = 1 << 20;

/// Nesting `tojson` serialises at most.
pub const MAX_JSON_DEPTH: usize = 128;

/// Bytes one `tojson` call writes at most.
pub const MAX_JSON_BYTES: usize = 64 << 20;

/// The longest `tojson` indent, in bytes.
pub const MAX_JSON_INDENT: usize = 64;

/// The template's name inside the environment (errors say `in chat_template:<line>`).
const NAME: &str = "chat_template";

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Who speaks: `system`, `user`, `assistant` (templates may know others, e.g. `tool`).
    pub role: String,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// A parsed chat template, ready to render conversations.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from (a file, or a file and its key), for errors.
    label: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("label", &self.label).finish()
    }
}

/// The message of `raise_exception`, carried through minijinja's error as its source.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    /// Parses `source`; `bos_token` and `eos_token` are the strings the template sees as
    /// `bos_token` and `eos_token` (undefined when `None`); `label` names the template's
    /// source in errors (e.g. the `tokenizer_config.json` path). A template that does not
    /// parse is an [`Error::Tokenizer`] naming `label`.
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>, label: &str) -> Result<ChatTemplate> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| Error::Tokenizer(format!("{label}: chat template syntax settings: {e}")))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", |message: Value| -> std::result::Result<Value, minijinja::Error> {
            let message = message.to_string();
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
        });
        env.add_filter("tojson", tojson);
        env.add_filter("string", |value: Value| Value::from(python_str(&value)));
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| Error::Tokenizer(format!("{label}: the chat template does not parse: {e}")))?;
        Ok(ChatTemplate {
            env,
            label: label.to_owned(),
            bos_token: bos_token.map(str::to_owned),
            eos_token: eos_token.map(str::to_owned),
        })
    }

    /// The template of `tokenizer` (GGUF `tokenizer.chat_template` or
    /// `tokenizer_config.json`'s), with its BOS and EOS token strings; `label` names the
    /// model in errors. A model without a template is refused (`--chat: <label> has no
    /// chat template`).
    pub fn from_tokenizer(tokenizer: &Tokenizer, label: &str) -> Result<ChatTemplate> {
        let source =
            tokenizer.chat_template().ok_or_else(|| Error::invalid(format!("--chat: {label} has no chat template")))?;
        let name = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
        let (bos, eos) = (name(tokenizer.bos_token_id()), name(tokenizer.eos_token_id()));
        Self::new(source, bos.as_deref(), eos.as_deref(), label)
    }

    /// Where the template came from.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The prompt for `messages`; with `add_generation_prompt` the template's opening of
    /// the assistant's turn follows. No messages, or `raise_exception` in the template, is
    /// an [`Error::InvalidArgument`] (with the template's message); any other failure (an
    /// unknown filter or method, an undefined value used, the fuel spent) an
    /// [`Error::Tokenizer`]; both name the template's source.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            // As transformers refuses it, before any template runs.
            return Err(Error::invalid(format!("{}: no messages to apply the chat template to", self.label)));
        }
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let mut context = vec![
            ("messages", Value::from(messages)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        if let Some(bos) = &self.bos_token {
            context.push(("bos_token", Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos_token {
            context.push(("eos_token", Value::from(eos.as_str())));
        }
        let template = self.env.get_template(NAME).map_err(|e| self.failed(e))?;
        template.render(Value::from_pairs(context)).map_err(|e| self.failed(e))
    }

    /// Our error for a failed render.
    fn failed(&self, e: minijinja::Error) -> Error {
        let label = &self.label;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(Raised(message)) = s.downcast_ref::<Raised>() {
                return Error::invalid(format!("{label}: the chat template refused the conversation: {message}"));
            }
            source = s.source();
        }
        if e.kind() == ErrorKind::OutOfFuel {
            return Error::Tokenizer(format!(
                "{label}: the chat template ran out of its budget ({TEMPLATE_FUEL} fuel: too many steps, or too \
                 much text created): {e}"
            ));
        }
        Error::Tokenizer(format!("{label}: the chat template failed: {e}"))
    }
}

/// Python's `str()` of a scalar (`True`, `None`, `1e-05`); minijinja's text otherwise.
fn python_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_owned(),
        ValueKind::None => "None".to_owned(),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(x) => python_float(x),
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

/// Prints `{{ … }}` values with [`python_str`] (undefined prints nothing, as in jinja2).
fn python_formatter(out: &mut Output, state: &mut State, value: &Value) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Bool | ValueKind::None | ValueKind::Number => {
            out.write_str(&python_str(value)).map_err(|e| minijinja::Error::new(ErrorKind::WriteFailure, e.to_string()))
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python's `repr()` of a float: the shortest digits that read back the same, positional
/// for decimal exponents in `[-4, 16)`, else `d.ddde±XX`; `NaN`, `Infinity`, `-Infinity` as
/// `json.dumps` writes them.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the same shortest digits: "-1.2345e-7".
    let scientific = format!("{x:e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else { return scientific };
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|&c| c != '.').collect();
    if (-4..16).contains(&exponent) {
        if exponent >= 0 {
            let whole = exponent as usize + 1;
            if digits.len() > whole {
                format!("{sign}{}.{}", &digits[..whole], &digits[whole..])
            } else {
                format!("{sign}{digits}{}.0", "0".repeat(whole - digits.len()))
            }
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exponent - 1) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        format!("{sign}{first}{dot}e{}{:02}", if exponent < 0 { '-' } else { '+' }, exponent.abs())
    }
}

/// How [`tojson`] writes (its keyword arguments, Python's defaults).
struct JsonStyle {
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, i.e. Python's `json.dumps` with those arguments.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let bad = |msg: String| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {msg}"));
    // Python takes a number of spaces or the indent string itself; longer than
    // MAX_JSON_INDENT is refused (each line repeats it once per level).
    let indent = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) => match (v.as_str(), v.as_i64()) {
            (Some(s), _) => Some(s.to_owned()),
            (None, Some(n)) => Some(" ".repeat(n.clamp(0, MAX_JSON_INDENT as i64 + 1) as usize)),
            (None, None) => return Err(bad(format!("indent must be a number or a string, not {}", v.kind()))),
        },
    };
    if let Some(indent) = indent.as_ref().filter(|i| i.len() > MAX_JSON_INDENT) {
        return Err(bad(format!("an indent of {} bytes is over {MAX_JSON_INDENT}", indent.len())));
    }
    let (item_separator, key_separator) = match kwargs.get::<Option<Value>>("separators")? {
        None => (if indent.is_some() { "," } else { ", " }.to_owned(), ": ".to_owned()),
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] if item.as_str().is_some() && key.as_str().is_some() => (item.to_string(), key.to_string()),
                _ => return Err(bad("separators must be two strings (item, key)".into())),
            }
        }
    };
    let style = JsonStyle {
        indent,
        item_separator,
        key_separator,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, &value, &style, 0)?;
    Ok(Value::from(out))
}

/// `value` as `json.dumps` writes it, at nesting `depth`.
fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    let bad = |msg: String| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {msg}"));
    if depth > MAX_JSON_DEPTH {
        return Err(bad(format!("nested deeper than {MAX_JSON_DEPTH} levels (a value that holds itself?)")));
    }
    if out.len() > MAX_JSON_BYTES {
        return Err(bad(format!("output over {MAX_JSON_BYTES} bytes")));
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&python_str(value)),
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_json_container(out, style, depth, '[', ']', &items, |out, item| {
                write_json(out, item, style, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                if keys.iter().any(|k| k.kind() != ValueKind::String) {
                    return Err(bad("sort_keys needs string keys".into()));
                }
                keys.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
            write_json_container(out, style, depth, '{', '}', &keys, |out, key| {
                let name = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::Number | ValueKind::Bool | ValueKind::None => {
                        let mut text = String::new();
                        write_json(&mut text, key, style, depth + 1)?;
                        text
                    }
                    kind => return Err(bad(format!("keys must be str, int, float, bool or None, not {kind}"))),
                };
                write_json_string(out, &name, style.ensure_ascii);
                out.push_str(&style.key_separator);
                write_json(out, &value.get_item(key)?, style, depth + 1)
            })?;
        }
        kind => return Err(bad(format!("a value of kind {kind} is not JSON serializable"))),
    }
    Ok(())
}

/// `open item sep item … close`, each item on its own indented line when `indent` is set;
/// empty containers as `[]` / `{}`.
fn write_json_container(
    out: &mut String,
    style: &JsonStyle,
    depth: usize,
    open: char,
    close: char,
    items: &[Value],
    mut write_item: impl FnMut(&mut String, &Value) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(indent) = &style.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_separator);
        }
        newline(out, depth + 1);
        write_item(out, item)?;
    }
    newline(out, depth);
    out.push(close);
    Ok(())
}

/// A JSON string as Python writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other
/// control characters as `\u00XX`; with `ensure_ascii` everything outside space..`~` as
/// `\uXXXX` (UTF-16, surrogate pairs above U+FFFF).
fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tests/fixtures/chat/`: templates and transformers' renderings of them
    /// (`scripts/chat_fixtures.py`).
    fn fixture_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat")
    }

    fn fixture_template(name: &str, bos: Option<&str>, eos: Option<&str>) -> ChatTemplate {
        let path = fixture_dir().join(name);
        let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        ChatTemplate::new(&source, bos, eos, &path.display().to_string()).unwrap()
    }

    fn messages_of(v: &serde_json::Value) -> Vec<Message> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect()
    }

    /// Every case transformers rendered: the same text, the same `raise_exception`
    /// message, or an error where transformers failed.
    #[test]
    fn renders_as_transformers_does() {
        let path = fixture_dir().join("expected.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let fixture: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = fixture["cases"].as_array().unwrap();
        assert!(cases.len() >= 30, "{} cases", cases.len());
        let mut rendered = std::collections::BTreeMap::new();
        for (i, case) in cases.iter().enumerate() {
            let name = case["template"].as_str().unwrap();
            let template = fixture_template(name, case["bos_token"].as_str(), case["eos_token"].as_str());
            let messages = messages_of(&case["messages"]);
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let got = template.render(&messages, agp);
            let what = format!("case {i} ({name}, {} messages, add_generation_prompt={agp})", messages.len());
            if let Some(want) = case.get("rendered").and_then(|v| v.as_str()) {
                let got = got.unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(got, want, "{what}");
                *rendered.entry(name).or_insert(0) += 1;
            } else if let Some(raised) = case.get("raised").and_then(|v| v.as_str()) {
                let e = got.expect_err(&what);
                assert!(matches!(e, Error::InvalidArgument(_)), "{what}: {e}");
                let e = e.to_string();
                assert!(e.contains(raised) && e.contains(name), "{what}: {e} (transformers: {raised})");
            } else {
                let error = case["error"].as_str().unwrap();
                let e = got.expect_err(&format!("{what}: transformers failed with {error}"));
                assert!(e.to_string().contains(name), "{what}: {e}");
            }
        }
        // Each family rendered at least its main conversations.
        for name in [
            "smollm2.jinja",
            "llama2.jinja",
            "llama3.jinja",
            "llama31.jinja",
            "mistral_v01.jinja",
            "mistral_v03.jinja",
            "features.jinja",
        ] {
            assert!(rendered.get(name).copied().unwrap_or(0) >= 1, "{name}: no rendering compared ({rendered:?})");
        }
    }

    /// The SmolLM2 template of the default model (GGUF `tokenizer.chat_template`), through
    /// the tokenizer: the same as the fixture transformers rendered.
    #[test]
    fn the_default_model_template_comes_from_its_tokenizer() {
        let Some(path) = crate::io::asset_path("SmolLM2-135M-Instruct.Q4_1.gguf") else { return };
        let tokenizer = crate::io::Tokenizer::from_gguf(&crate::io::GgufFile::open(&path).unwrap()).unwrap();
        let ours = ChatTemplate::from_tokenizer(&tokenizer, &path.display().to_string()).unwrap();
        let fixture = fixture_dir().join("smollm2.jinja");
        assert_eq!(tokenizer.chat_template(), Some(std::fs::read_to_string(fixture).unwrap().as_str()));
        let messages = [
            Message::new("system", "You are a helpful assistant."),
            Message::new("user", "What is the capital of France?"),
        ];
        assert_eq!(
            ours.render(&messages, true).unwrap(),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of \
             France?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_model_without_a_template_is_refused_by_name() {
        let tokenizer = crate::io::Tokenizer::byte_level().unwrap();
        let e = ChatTemplate::from_tokenizer(&tokenizer, "tiny.safetensors").unwrap_err().to_string();
        assert!(e.contains("--chat: tiny.safetensors has no chat template"), "{e}");
    }

    #[test]
    fn raise_exception_and_broken_templates_name_the_source() {
        let t = ChatTemplate::new(
            "{% if messages|length > 1 %}{{ raise_exception('only one message, got ' ~ messages|length) }}{% endif %}ok",
            None,
            None,
            "dir/tokenizer_config.json",
        )
        .unwrap();
        assert_eq!(t.render(&[Message::new("user", "hi")], false).unwrap(), "ok");
        let two = [Message::new("user", "a"), Message::new("user", "b")];
        let e = t.render(&two, false).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let e = e.to_string();
        assert!(e.contains("dir/tokenizer_config.json") && e.contains("only one message, got 2"), "{e}");

        for (source, why) in [
            ("{% for m in messages %}{{ m.content }}", "end of input"),
            ("{% generation %}{{ x }}{% endgeneration %}", "generation"),
        ] {
            let e =
                ChatTemplate::new(source, None, None, "model.gguf (tokenizer.chat_template)").unwrap_err().to_string();
            assert!(e.contains("model.gguf (tokenizer.chat_template)") && e.contains(why), "{source}: {e}");
        }
        // Failures at render time: an unknown filter or method, an undefined value's attribute.
        for source in [
            "{{ messages | no_such_filter }}",
            "{{ messages[0].content.no_such_method() }}",
            "{{ messages[5].content.strip() }}",
        ] {
            let t = ChatTemplate::new(source, None, None, "cfg.json").unwrap();
            let e = t.render(&[Message::new("user", "hi")], false).unwrap_err();
            assert!(matches!(e, Error::Tokenizer(_)) && e.to_string().contains("cfg.json"), "{source}: {e}");
        }
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(e.contains("dir/tokenizer_config.json: no messages"), "{e}");
    }

    #[test]
    fn hostile_templates_are_bounded() {
        for source in [
            // Endless work: nested loops of a hundred thousand steps each.
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            // Memory: a string grown by repetition.
            "{% set s = 'x' * 90000000 %}{{ s }}{{ s }}",
            // A namespace that holds itself, written out.
            "{% set ns = namespace() %}{% set ns.me = ns %}{{ ns | tojson }}",
            // Indents that would repeat a long string on every line.
            "{{ messages | tojson(indent=100000000) }}",
            "{{ messages | tojson(indent=' ' * 100000) }}",
        ] {
            let t = ChatTemplate::new(source, None, None, "evil.json").unwrap();
            let started = std::time::Instant::now();
            let e = t.render(&[Message::new("user", "hi")], false).unwrap_err().to_string();
            assert!(e.contains("evil.json"), "{source}: {e}");
            assert!(started.elapsed().as_secs() < 20, "{source}: {:?}", started.elapsed());
        }
    }

    #[test]
    fn long_conversations_fit_the_budget() {
        let long: Vec<Message> = (0..2000)
            .map(|i| {
                Message::new(if i % 2 == 0 { "user" } else { "assistant" }, format!("{i:04} {}", "word ".repeat(200)))
            })
            .collect();
        let content: usize = long.iter().map(|m| m.content.len()).sum();
        for name in ["llama31.jinja", "mistral_v03.jinja", "llama2.jinja"] {
            let prompt = fixture_template(name, Some("<s>"), Some("</s>")).render(&long, true).unwrap();
            assert!(prompt.len() > content && prompt.contains("1999 word"), "{name}: {} bytes", prompt.len());
        }
    }

    #[test]
    fn floats_are_spelled_as_python_repr() {
        for (x, want) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (100.0, "100.0"),
            (0.1, "0.1"),
            (2.5, "2.5"),
            (1e-5, "1e-05"),
            (1.5e-4, "0.00015"),
            (1e16, "1e+16"),
            (1.2345e16, "1.2345e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (-3.25e-7, "-3.25e-07"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(python_float(x), want, "{x:e}");
        }
    }
}
