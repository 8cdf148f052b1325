"""fruitlens: fruit photos → Spark → MobileNetV2 features → Parquet → PCA."""
__version__ = "0.1.0"
