"""Course and demo support, apart from the pipeline: the Colab environment, the demo command and
its report, and publishing the notebooks from a fork (install cells, Colab badges). The public
calls load on first use."""

from pneumolib.base.lazy import lazy_exports

_EXPORTS = {
    "pneumolib.course.demo": "run_demo",
    "pneumolib.course.report": "write_report",
    "pneumolib.course.results": "read_results results_table provenance_line render_markdown",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
