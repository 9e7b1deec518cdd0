//! A parameter whose type does not deserialize: the error is at the type and says
//! to derive `serde::Deserialize`.
pub struct Point {
    pub x: i64,
}

#[derive(Default)]
pub struct Geometry;

#[metabridge::service(name = "geometry")]
impl Geometry {
    #[metabridge::function]
    pub fn norm(&self, p: Point) -> i64 {
        p.x.abs()
    }
}

pub struct Shape;

#[metabridge::service(name = "shape")]
impl Shape {
    pub fn new(origin: Point) -> Self {
        let _ = origin;
        Shape
    }
}

fn main() {}
