"""Classic ML for microcontrollers: scikit-learn trees and small MLPs to plain C through emlearn
(``convert``). The generated C is compiled here with gcc and run on the evaluation data, so the
accuracy reported is the firmware code's, and its flash and RAM are read off the compiled object."""
