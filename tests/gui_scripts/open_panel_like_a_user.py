"""What a user does, in this order: start napari, open the sample, open the CiNuSeg panel from
the Plugins menu (npe2's widget command), segment the sample with the bundled model. Run in a
fresh process under Xvfb by ``tests/test_panel_opens.py``; a crash ends this process, not pytest."""

import sys
import time

import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer()
assert "torch" not in sys.modules, "napari itself must not have imported PyTorch before the panel"
viewer.open_sample("napari-cinuseg", "he-cmu1")
_, widget = viewer.window.add_plugin_dock_widget("napari-cinuseg", "CiNuSeg")
print("panel opened", flush=True)

widget.model_section.bundled_btn.click()  # "Bundled base model"
widget.segment_section.tile.setValue(256)
worker = widget.start_segmentation()
finished = []
worker.finished.connect(lambda: finished.append(True))
app = QApplication.instance()
while not finished:
    app.processEvents()
    time.sleep(0.02)
classes = [layer.name for layer in viewer.layers if layer.name.endswith("· classes")]
print("segmented", classes, widget.segment_section.table.rowCount(), flush=True)
viewer.close()
