"""The smallest training Config the tests run (shared by the interrupt, tune and PostgreSQL
sweep tests): about a second an epoch on 2 CPU cores, only the last layer learns."""

TINY = dict(
    model="resnet18",
    mode="feature-extraction",
    weights="none",
    image_size=32,
    cache_size=64,
    epochs=1,
    max_steps_per_epoch=1,
    workers=0,
    device="cpu",
    eval_batch_size=64,
    schedule="none",
)
