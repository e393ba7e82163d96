"""Export stage (installed as `stkd_keras.export`): TFLite/LiteRT and ONNX students.

Filled by the export issue; empty for now.
"""
