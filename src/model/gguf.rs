//! The subset of GGUF (llama.cpp's tensor file format, version 3) that xbench's quantized-layer
//! cache writes and reads: string metadata and one-dimensional tensors of the ggml types F32, F16,
//! BF16, I8 and I32, little-endian, data aligned to 32 bytes. Written by hand because candle's GGUF
//! code knows only ggml's quantized block types, not the plain integer tensors that xbench's packed
//! layouts are stored as.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
const ALIGNMENT: usize = 32;
/// GGUF metadata value types used here.
const VALUE_U32: u32 = 4;
const VALUE_STRING: u32 = 8;

/// A tensor's values, by ggml type.
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    F32(Vec<f32>),
    /// fp16 bits.
    F16(Vec<u16>),
    /// bf16 bits.
    Bf16(Vec<u16>),
    I8(Vec<i8>),
    I32(Vec<i32>),
}

impl Tensor {
    /// The ggml type id.
    fn ggml_type(&self) -> u32 {
        match self {
            Tensor::F32(_) => 0,
            Tensor::F16(_) => 1,
            Tensor::I8(_) => 24,
            Tensor::I32(_) => 26,
            Tensor::Bf16(_) => 30,
        }
    }

    fn len(&self) -> usize {
        match self {
            Tensor::F32(v) => v.len(),
            Tensor::F16(v) | Tensor::Bf16(v) => v.len(),
            Tensor::I8(v) => v.len(),
            Tensor::I32(v) => v.len(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Tensor::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Tensor::F16(v) | Tensor::Bf16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Tensor::I8(v) => v.iter().map(|&x| x as u8).collect(),
            Tensor::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    fn from_bytes(ggml_type: u32, bytes: &[u8]) -> Result<Self, String> {
        let words2 = || -> Vec<u16> {
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let words4 = || -> Vec<[u8; 4]> {
            bytes
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect()
        };
        Ok(match ggml_type {
            0 => Tensor::F32(words4().into_iter().map(f32::from_le_bytes).collect()),
            1 => Tensor::F16(words2()),
            24 => Tensor::I8(bytes.iter().map(|&b| b as i8).collect()),
            26 => Tensor::I32(words4().into_iter().map(i32::from_le_bytes).collect()),
            30 => Tensor::Bf16(words2()),
            other => return Err(format!("ggml type {other} is not one xbench stores")),
        })
    }

    fn element_size(ggml_type: u32) -> Option<usize> {
        match ggml_type {
            0 | 26 => Some(4),
            1 | 30 => Some(2),
            24 => Some(1),
            _ => None,
        }
    }
}

/// A GGUF file's string metadata and named tensors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gguf {
    pub metadata: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, Tensor>,
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn padding(len: usize) -> usize {
    (ALIGNMENT - len % ALIGNMENT) % ALIGNMENT
}

impl Gguf {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64 + 1).to_le_bytes());
        put_string(&mut out, "general.alignment");
        out.extend_from_slice(&VALUE_U32.to_le_bytes());
        out.extend_from_slice(&(ALIGNMENT as u32).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut out, key);
            out.extend_from_slice(&VALUE_STRING.to_le_bytes());
            put_string(&mut out, value);
        }
        let mut offset = 0usize;
        let mut data = Vec::new();
        for (name, tensor) in &self.tensors {
            put_string(&mut out, name);
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&(tensor.len() as u64).to_le_bytes());
            out.extend_from_slice(&tensor.ggml_type().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            let bytes = tensor.bytes();
            offset += bytes.len();
            data.extend_from_slice(&bytes);
            let pad = padding(offset);
            data.resize(data.len() + pad, 0);
            offset += pad;
        }
        out.resize(out.len() + padding(out.len()), 0);
        out.extend_from_slice(&data);
        out
    }

    /// Writes the file atomically: to a temporary file beside it, then renamed over it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&self.to_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Parses a file's bytes; the error says what is wrong with them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err("not a GGUF file (no GGUF magic)".into());
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(format!(
                "GGUF version {version}; xbench reads version {VERSION}"
            ));
        }
        let tensors = r.u64()? as usize;
        let kvs = r.u64()? as usize;
        let mut file = Gguf::default();
        let mut alignment = ALIGNMENT;
        for _ in 0..kvs {
            let key = r.string()?;
            match r.u32()? {
                VALUE_STRING => {
                    let value = r.string()?;
                    file.metadata.insert(key, value);
                }
                VALUE_U32 => {
                    let value = r.u32()?;
                    if key == "general.alignment" {
                        alignment = value as usize;
                    }
                }
                other => {
                    return Err(format!(
                        "metadata '{key}' has value type {other}, not one xbench writes"
                    ))
                }
            }
        }
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(format!("alignment {alignment} is not a power of two"));
        }
        let mut infos = Vec::with_capacity(tensors.min(1 << 16));
        for _ in 0..tensors {
            let name = r.string()?;
            let dims = r.u32()?;
            let mut len = 1usize;
            for _ in 0..dims {
                len = len
                    .checked_mul(r.u64()? as usize)
                    .ok_or("a tensor's size overflows")?;
            }
            let ggml_type = r.u32()?;
            let offset = r.u64()? as usize;
            infos.push((name, ggml_type, len, offset));
        }
        let data = r.at + (alignment - r.at % alignment) % alignment;
        for (name, ggml_type, len, offset) in infos {
            let size = Tensor::element_size(ggml_type).ok_or_else(|| {
                format!("tensor '{name}' has ggml type {ggml_type}, not one xbench stores")
            })?;
            let start = data
                .checked_add(offset)
                .ok_or("a tensor offset overflows")?;
            let end = len
                .checked_mul(size)
                .and_then(|n| start.checked_add(n))
                .ok_or("a tensor's size overflows")?;
            let bytes = bytes
                .get(start..end)
                .ok_or_else(|| format!("tensor '{name}' runs past the end of the file"))?;
            file.tensors
                .insert(name, Tensor::from_bytes(ggml_type, bytes)?);
        }
        Ok(file)
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_bytes(&bytes)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("the file ends early")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = self.u64()? as usize;
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| "a string is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Gguf {
        let mut g = Gguf::default();
        g.metadata.insert("xbench.precision".into(), "int4".into());
        g.tensors
            .insert("a".into(), Tensor::F32(vec![1.0, -2.5, 3.25]));
        g.tensors
            .insert("b".into(), Tensor::I8(vec![-8, 7, 0, 127, -128]));
        g.tensors
            .insert("c".into(), Tensor::F16(vec![0x3C00, 0xBC00]));
        g.tensors
            .insert("d".into(), Tensor::I32(vec![i32::MIN, 0, 42]));
        g.tensors.insert("e".into(), Tensor::Bf16(vec![0x3F80]));
        g
    }

    #[test]
    fn files_round_trip() {
        let g = sample();
        let bytes = g.to_bytes();
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(Gguf::from_bytes(&bytes).unwrap(), g);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        g.write(&path).unwrap();
        assert_eq!(Gguf::read(&path).unwrap(), g);
    }

    /// Truncated or altered files are errors that say what is wrong, never a panic.
    #[test]
    fn damaged_files_are_errors() {
        let g = sample();
        let bytes = g.to_bytes();
        for cut in [0, 3, 10, 30, bytes.len() / 2] {
            assert!(Gguf::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Cut anywhere: an error, or (cutting only the last tensor's alignment padding) the same.
        for cut in 0..bytes.len() {
            if let Ok(parsed) = Gguf::from_bytes(&bytes[..cut]) {
                assert_eq!(parsed, g, "cut at {cut}");
            }
        }
        let mut other = bytes.clone();
        other[0] = b'X';
        assert!(Gguf::from_bytes(&other).unwrap_err().contains("magic"));
        let mut other = bytes.clone();
        other[4] = 2;
        assert!(Gguf::from_bytes(&other).unwrap_err().contains("version"));
        // Every single-byte change parses or fails cleanly.
        for i in 0..bytes.len().min(400) {
            let mut other = bytes.clone();
            other[i] ^= 0xFF;
            let _ = Gguf::from_bytes(&other);
        }
    }
}
