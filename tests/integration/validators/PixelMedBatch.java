// Runs PixelMed's validators on several files in one JVM: DicomSRValidator's own main() takes one file
// and spends most of its time compiling the SR template stylesheet, which this compiles once.
// SR objects go to com.pixelmed.validate.DicomSRValidator (TID tree + IOD); others to
// DicomInstanceValidator (PixelMed's IOD tables; it knows few image IODs). Output: "=== <file>" then
// the validator's report, for tests/integration/test_result_validators.py to read.
import com.pixelmed.dicom.AttributeList;
import com.pixelmed.dicom.SOPClass;
import com.pixelmed.dicom.TagFromName;
import com.pixelmed.validate.DicomInstanceValidator;
import com.pixelmed.validate.DicomSRValidator;

public class PixelMedBatch {
    public static void main(String[] args) throws Exception {
        DicomSRValidator sr = null;
        DicomInstanceValidator iod = null;
        for (String file : args) {
            AttributeList list = new AttributeList();
            list.read(file);
            String sopClass = com.pixelmed.dicom.Attribute.getSingleStringValueOrEmptyString(list, TagFromName.SOPClassUID);
            System.out.println("=== " + file);
            if (SOPClass.isStructuredReport(sopClass)) {
                if (sr == null) sr = new DicomSRValidator();
                System.out.println(sr.validate(list));
            } else {
                if (iod == null) iod = new DicomInstanceValidator();
                System.out.println(iod.validate(list));
            }
        }
    }
}
