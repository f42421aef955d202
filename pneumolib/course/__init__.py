"""Course and demo support, apart from the pipeline: the Colab environment, the demo command and
its report, and publishing the notebooks from a fork (install cells, Colab badges)."""
