//! OTLP's wire values and the forms the export stage works on (the SDK's `Value` for span and
//! attribute redaction, the logs `AnyValue` for log redaction). Values the SDK form cannot hold
//! (key-value lists, bytes, mixed arrays) are shown to the plugins as text; a value a plugin
//! leaves alone goes out exactly as it came in.

use opentelemetry::logs::AnyValue as LogValue;
use opentelemetry::{Array, Key, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue as PKeyValue, KeyValueList, any_value::Value as PV,
};
use std::collections::HashMap;

pub fn to_value(v: &AnyValue) -> Value {
    match &v.value {
        Some(PV::StringValue(s)) => Value::String(s.clone().into()),
        Some(PV::BoolValue(b)) => Value::Bool(*b),
        Some(PV::IntValue(i)) => Value::I64(*i),
        Some(PV::DoubleValue(d)) => Value::F64(*d),
        Some(PV::ArrayValue(a)) => array(a).unwrap_or_else(|| Value::String(render(v).into())),
        Some(PV::KvlistValue(_) | PV::BytesValue(_)) => Value::String(render(v).into()),
        // Indexes into a profile's string table: no text of their own here.
        Some(PV::StringValueStrindex(i)) => Value::I64(i64::from(*i)),
        None => Value::String(StringValue::from("")),
    }
}

/// A homogeneous array of scalars, as the SDK holds them.
fn array(a: &ArrayValue) -> Option<Value> {
    let vals: Vec<&PV> = a.values.iter().filter_map(|v| v.value.as_ref()).collect();
    if vals.len() != a.values.len() {
        return None;
    }
    macro_rules! all {
        ($pat:ident, $conv:expr, $variant:ident) => {
            vals.iter()
                .map(|v| match v {
                    PV::$pat(x) => Some($conv(x)),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(|xs| Value::Array(Array::$variant(xs)))
        };
    }
    all!(
        StringValue,
        |s: &String| StringValue::from(s.clone()),
        String
    )
    .or_else(|| all!(BoolValue, |b: &bool| *b, Bool))
    .or_else(|| all!(IntValue, |i: &i64| *i, I64))
    .or_else(|| all!(DoubleValue, |d: &f64| *d, F64))
}

pub fn from_value(v: &Value) -> AnyValue {
    let value = match v {
        Value::String(s) => PV::StringValue(s.to_string()),
        Value::Bool(b) => PV::BoolValue(*b),
        Value::I64(i) => PV::IntValue(*i),
        Value::F64(f) => PV::DoubleValue(*f),
        Value::Array(a) => {
            let values = match a {
                Array::Bool(xs) => xs.iter().map(|x| PV::BoolValue(*x)).collect(),
                Array::I64(xs) => xs.iter().map(|x| PV::IntValue(*x)).collect(),
                Array::F64(xs) => xs.iter().map(|x| PV::DoubleValue(*x)).collect(),
                Array::String(xs) => xs.iter().map(|x| PV::StringValue(x.to_string())).collect(),
                _ => Vec::<PV>::new(),
            };
            PV::ArrayValue(ArrayValue {
                values: values
                    .into_iter()
                    .map(|v| AnyValue { value: Some(v) })
                    .collect(),
            })
        }
        other => PV::StringValue(other.to_string()),
    };
    AnyValue { value: Some(value) }
}

/// Text for values plugins see as strings.
fn render(v: &AnyValue) -> String {
    match &v.value {
        Some(PV::StringValue(s)) => s.clone(),
        Some(PV::BoolValue(b)) => b.to_string(),
        Some(PV::IntValue(i)) => i.to_string(),
        Some(PV::DoubleValue(d)) => d.to_string(),
        Some(PV::BytesValue(b)) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Some(PV::ArrayValue(a)) => {
            let parts: Vec<String> = a.values.iter().map(render).collect();
            format!("[{}]", parts.join(", "))
        }
        Some(PV::KvlistValue(l)) => {
            let parts: Vec<String> = l
                .values
                .iter()
                .map(|kv| {
                    format!(
                        "{}: {}",
                        kv.key,
                        kv.value.as_ref().map(render).unwrap_or_default()
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        Some(PV::StringValueStrindex(i)) => i.to_string(),
        None => String::new(),
    }
}

pub fn to_kvs(attrs: &[PKeyValue]) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|kv| {
            KeyValue::new(
                kv.key.clone(),
                kv.value
                    .as_ref()
                    .map(to_value)
                    .unwrap_or_else(|| Value::String("".into())),
            )
        })
        .collect()
}

/// The stage's output back on the wire: unchanged values keep their original form.
pub fn from_kvs(before: &[PKeyValue], after: &[KeyValue]) -> Vec<PKeyValue> {
    after
        .iter()
        .map(|kv| {
            let original = before.iter().find(|p| p.key == kv.key.as_str());
            let value = match original.and_then(|p| p.value.as_ref()) {
                Some(orig) if to_value(orig) == kv.value => orig.clone(),
                _ => from_value(&kv.value),
            };
            PKeyValue {
                key: kv.key.to_string(),
                value: Some(value),
                key_strindex: 0,
            }
        })
        .collect()
}

/// Sets `attrs` on `target`, replacing values of the same keys.
pub fn upsert(target: &mut Vec<PKeyValue>, attrs: &[KeyValue]) {
    for kv in attrs {
        let value = Some(from_value(&kv.value));
        match target.iter_mut().find(|p| p.key == kv.key.as_str()) {
            Some(p) => p.value = value,
            None => target.push(PKeyValue {
                key: kv.key.to_string(),
                value,
                key_strindex: 0,
            }),
        }
    }
}

pub fn to_log_value(v: &AnyValue) -> LogValue {
    match &v.value {
        Some(PV::StringValue(s)) => LogValue::String(s.clone().into()),
        Some(PV::BoolValue(b)) => LogValue::Boolean(*b),
        Some(PV::IntValue(i)) => LogValue::Int(*i),
        Some(PV::DoubleValue(d)) => LogValue::Double(*d),
        Some(PV::BytesValue(b)) => LogValue::Bytes(Box::new(b.clone())),
        Some(PV::ArrayValue(a)) => {
            LogValue::ListAny(Box::new(a.values.iter().map(to_log_value).collect()))
        }
        Some(PV::KvlistValue(l)) => LogValue::Map(Box::new(
            l.values
                .iter()
                .map(|kv| {
                    (
                        Key::from(kv.key.clone()),
                        kv.value
                            .as_ref()
                            .map(to_log_value)
                            .unwrap_or(LogValue::String("".into())),
                    )
                })
                .collect::<HashMap<_, _>>(),
        )),
        Some(PV::StringValueStrindex(i)) => LogValue::Int(i64::from(*i)),
        None => LogValue::String("".into()),
    }
}

pub fn from_log_value(v: &LogValue) -> AnyValue {
    let value = match v {
        LogValue::String(s) => PV::StringValue(s.to_string()),
        LogValue::Boolean(b) => PV::BoolValue(*b),
        LogValue::Int(i) => PV::IntValue(*i),
        LogValue::Double(d) => PV::DoubleValue(*d),
        LogValue::Bytes(b) => PV::BytesValue(b.to_vec()),
        LogValue::ListAny(xs) => PV::ArrayValue(ArrayValue {
            values: xs.iter().map(from_log_value).collect(),
        }),
        LogValue::Map(m) => PV::KvlistValue(KeyValueList {
            values: m
                .iter()
                .map(|(k, v)| PKeyValue {
                    key: k.to_string(),
                    value: Some(from_log_value(v)),
                    key_strindex: 0,
                })
                .collect(),
        }),
        other => PV::StringValue(format!("{other:?}")),
    };
    AnyValue { value: Some(value) }
}

/// Runs the built-in sanitiser over every string in a wire value (nested ones too).
pub fn sanitize_any(v: &mut AnyValue) {
    match &mut v.value {
        Some(PV::StringValue(s)) => {
            let clean = crate::telemetry::sanitize::sanitize(s);
            if clean != *s {
                *s = clean;
            }
        }
        Some(PV::ArrayValue(a)) => a.values.iter_mut().for_each(sanitize_any),
        Some(PV::KvlistValue(l)) => l
            .values
            .iter_mut()
            .filter_map(|kv| kv.value.as_mut())
            .for_each(sanitize_any),
        _ => {}
    }
}

pub fn sanitize_kvs(attrs: &mut [PKeyValue]) {
    attrs
        .iter_mut()
        .filter_map(|kv| kv.value.as_mut())
        .for_each(sanitize_any);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> AnyValue {
        AnyValue {
            value: Some(PV::StringValue(x.into())),
        }
    }

    #[test]
    fn values_round_trip_and_unchanged_ones_keep_their_form() {
        let list = AnyValue {
            value: Some(PV::KvlistValue(KeyValueList {
                values: vec![PKeyValue {
                    key: "a".into(),
                    value: Some(s("b")),
                    key_strindex: 0,
                }],
            })),
        };
        let arr = AnyValue {
            value: Some(PV::ArrayValue(ArrayValue {
                values: vec![s("x"), s("y")],
            })),
        };
        let before = vec![
            PKeyValue {
                key: "l".into(),
                value: Some(list.clone()),
                key_strindex: 0,
            },
            PKeyValue {
                key: "arr".into(),
                value: Some(arr.clone()),
                key_strindex: 0,
            },
            PKeyValue {
                key: "secret".into(),
                value: Some(s("sk-1")),
                key_strindex: 0,
            },
        ];
        let mut kvs = to_kvs(&before);
        assert_eq!(kvs[0].value, Value::String("{a: b}".into()));
        kvs[2].value = Value::String("[REDACTED]".into());
        let after = from_kvs(&before, &kvs);
        assert_eq!(after[0].value.as_ref(), Some(&list));
        assert_eq!(after[1].value.as_ref(), Some(&arr));
        assert_eq!(after[2].value.as_ref(), Some(&s("[REDACTED]")));
        assert_eq!(from_log_value(&to_log_value(&list)), list);
    }

    #[test]
    fn the_sanitiser_reaches_nested_strings() {
        let mut v = AnyValue {
            value: Some(PV::ArrayValue(ArrayValue {
                values: vec![s("see https://bob:hunter2@example.com/x")],
            })),
        };
        sanitize_any(&mut v);
        assert!(!render(&v).contains("hunter2"), "{}", render(&v));
    }
}
