"""PACS integration: DICOMweb client (QIDO/WADO/STOW-RS) and the DICOM results of a prediction."""
