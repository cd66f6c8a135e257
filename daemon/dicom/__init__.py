"""DICOM on the wire: the Storage SCP that receives, the objects sent back to the PACS, and the
contained adjustments to pynetdicom's receive path (`daemon.dicom.patches`).
"""
