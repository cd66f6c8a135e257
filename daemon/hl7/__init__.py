"""HL7 v2 report intake over MLLP: radiology reports (ORU^R01) from the RIS, for ground truth.

framing (MLLP frames with a hard size bound), acks (ACK messages), messages (decoding, parsing and
what is read from which field), listener (the port: allow-list, TLS, limits, time-outs) and intake
(one message in, one ACK out: AA only once the report is durably recorded).
"""
