//! Shapes: dynamic lists of dimensions, row-major and contiguous. Tensors in this crate
//! are always contiguous; ops that need another layout copy explicitly.

use std::fmt;

use crate::{Error, Result};

/// Dimensions of a tensor, outermost first (row-major).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }

    /// Size of dimension `i`, or an error naming `op`.
    pub fn dim(&self, op: &'static str, i: usize) -> Result<usize> {
        self.0.get(i).copied().ok_or_else(|| Error::BadShape {
            op,
            shape: self.clone(),
            msg: format!("has no dimension {i}"),
        })
    }

    /// Last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.0.last().copied().unwrap_or(1)
    }

    /// Product of all but the last dimension: the number of rows when the tensor is seen
    /// as a matrix `[rows, last_dim]`.
    pub fn rows(&self) -> usize {
        if self.0.is_empty() {
            1
        } else {
            self.0[..self.0.len() - 1].iter().product()
        }
    }

    /// The dimensions if the rank is exactly `N`, else a shape error naming `op`.
    pub fn dims_n<const N: usize>(&self, op: &'static str) -> Result<[usize; N]> {
        <[usize; N]>::try_from(self.0.as_slice()).map_err(|_| Error::BadShape {
            op,
            shape: self.clone(),
            msg: format!("expected rank {N}"),
        })
    }

    /// Error unless `self == other`.
    pub fn expect_eq(&self, op: &'static str, other: &Shape) -> Result<()> {
        if self == other {
            Ok(())
        } else {
            Err(Error::ShapeMismatch { op, lhs: self.clone(), rhs: other.clone() })
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}

impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}

impl From<&Shape> for Shape {
    fn from(v: &Shape) -> Self {
        v.clone()
    }
}

impl From<usize> for Shape {
    fn from(v: usize) -> Self {
        Shape(vec![v])
    }
}

impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}
