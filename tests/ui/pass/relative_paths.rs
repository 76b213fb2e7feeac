//! Types written with `self::` and `super::` inside a nested module resolve
//! the same for the generated companion as for the function.
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
}

pub mod jobs {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    pub struct Outcome {
        pub done: bool,
    }

    pub mod inner {
        use serde::{Deserialize, Serialize};

        #[derive(Serialize, Deserialize)]
        pub struct Local(pub u8);

        #[taskflow::task]
        pub fn run(job: super::super::Job, local: self::Local) -> super::Outcome {
            super::Outcome {
                done: job.id > u64::from(local.0),
            }
        }

        #[taskflow::task]
        pub async fn run_many(
            jobs: Vec<crate::Job>,
            locals: Option<self::Local>,
        ) -> Vec<super::Outcome> {
            let _ = locals;
            jobs.into_iter()
                .map(|_| super::Outcome { done: true })
                .collect()
        }
    }
}

fn main() {
    let outcome = jobs::inner::run(Job { id: 2 }, jobs::inner::Local(1));
    assert!(outcome.done);
    let _ = jobs::inner::run::call;
    let _ = jobs::inner::run_many::call;
}
