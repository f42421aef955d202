"""Course and demo support: the Colab environment, the demo command and its report."""
