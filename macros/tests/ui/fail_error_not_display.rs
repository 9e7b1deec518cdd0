// An endpoint's error type must implement Display (its callers get its
// text): the error points at the user's error type.

pub struct Thumbnailer;

#[derive(Debug)]
pub struct ThumbError;

#[metabridge::service(name = "thumbs")]
impl Thumbnailer {
    pub fn new() -> Self {
        Thumbnailer
    }

    #[metabridge::function]
    pub fn shrink(&self, side: u32) -> Result<u32, ThumbError> {
        if side == 0 {
            Err(ThumbError)
        } else {
            Ok(side / 2)
        }
    }
}

fn main() {}
